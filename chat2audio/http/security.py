"""Who may call: the API key, and the origin of browser requests."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request

from chat2audio.errors import Forbidden, Unauthorized


# Dependencies are `async def`: a plain `def` would hop to a worker thread on every request.
async def require_api_key(request: Request) -> None:
    expected = request.app.state.service.settings.api_key
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong API key: send Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})


async def require_same_origin(request: Request) -> None:
    """Refuse requests that a web page of another site makes the browser send.

    JSON with its content type already needs a CORS preflight, but a form or multipart POST does
    not: without this check any site could make the service talk and add turns to a session.
    Same-origin pages and `CHAT2AUDIO_CORS_ORIGINS` pass; clients that send no Origin (curl, SDKs) too."""
    origin = request.headers.get("origin")
    if origin is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    allowed = request.app.state.service.settings.cors_origins
    # Host only, not scheme: behind a TLS-terminating proxy the page is https, this server http.
    same_origin = urlsplit(origin).netloc == request.headers.get("host", "")
    if not same_origin and origin not in allowed and "*" not in allowed:
        raise Forbidden(f"requests from the web origin {origin[:100]} are not allowed; add it to CHAT2AUDIO_CORS_ORIGINS")
