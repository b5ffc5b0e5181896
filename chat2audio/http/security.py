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
    not, nor does a GET: without this check any site could make the service talk (a GET of
    /gsv/tts synthesizes as a POST does) and add turns to a session. Same-origin pages and
    `CHAT2AUDIO_CORS_ORIGINS` pass; clients that send no Origin (curl, SDKs) too, unless the
    browser labels the request as made by another site (`Sec-Fetch-Site: cross-site`: an
    `<audio src>` or `<img>` sends no Origin). CORS preflights (OPTIONS) are CORSMiddleware's."""
    if request.method == "OPTIONS":
        return
    allowed = request.app.state.service.settings.cors_origins
    if "*" in allowed:
        return
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site") == "cross-site":
            raise Forbidden(
                "a page of another site may not call this service without an Origin the service allows; "
                "fetch with CORS from an origin in CHAT2AUDIO_CORS_ORIGINS"
            )
        return
    # Host only, not scheme: behind a TLS-terminating proxy the page is https, this server http.
    same_origin = urlsplit(origin).netloc == request.headers.get("host", "")
    if not same_origin and origin not in allowed:
        raise Forbidden(f"requests from the web origin {origin[:100]} are not allowed; add it to CHAT2AUDIO_CORS_ORIGINS")
