"""Pure ASGI middleware (not BaseHTTPMiddleware, which would break streaming and disconnects)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat2audio.http.errors import error_body

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names and the bind address; any host when bound to every interface (the
    operator then names the hosts with CHAT2AUDIO_ALLOWED_HOSTS to keep the rebinding guard)."""
    return ["*"] if bind_host in WILDCARD_BINDS else sorted(LOOPBACK_NAMES | {bind_host})


class RequestContext:
    """Gives every request an id (echoed as X-Request-Id) and a start time, and, before the
    endpoint runs, rejects with a JSON error:
    - a Host header not in `allowed_hosts` (400): a DNS-rebinding page names its own host;
    - more than one Content-Type header (400): the limit below and the route must read the same one;
    - bodies over the limit (413): `max_body_bytes` for JSON, `max_upload_bytes` for multipart
      uploads (voice input).

    It also bounds how long a request may hold its slot when its client does not cooperate
    (uvicorn has no write timeout): one `send` may wait `send_timeout_s` for a client that stopped
    reading, and the whole request lives at most `life_s`. Past either, the request is abandoned:
    its work is cancelled, its slot freed, its connection closed (uvicorn logs that the response
    was not completed)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, allowed_hosts: list[str],
        send_timeout_s: float, life_s: float,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.allowed_hosts = allowed_hosts
        self.send_timeout_s = send_timeout_s
        self.life_s = life_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        path = scope.get("path", "")  # errors under /v1/ take OpenAI's shape
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()

        raw_headers = scope.get("headers") or []
        headers = dict(raw_headers)
        if not self._host_allowed(headers.get(b"host", b"").decode("latin-1")):
            await _reject(send, request_id, 400, "invalid_host", "this Host is not served here; see CHAT2AUDIO_ALLOWED_HOSTS", path=path)
            return
        if sum(1 for name, _ in raw_headers if name == b"content-type") > 1:
            await _reject(send, request_id, 400, "invalid_request", "send one Content-Type header, not several", path=path)
            return
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_upload_bytes if multipart else self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _reject(send, request_id, 413, "body_too_large", f"request body is over {limit} bytes", path=path)
            return

        received = 0

        async def limited_receive() -> Message:
            # Chunked bodies declare no length: count as they arrive. FastAPI passes an
            # HTTPException raised here through to the app's error handlers.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body is over {limit} bytes")
            return message

        status = 500  # what the client got, if the app never answered
        started = stalled = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, stalled
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            try:
                # Blocks while the client's TCP window is full: a client that stops reading
                # would otherwise hold its slot (and its reply's model work) forever.
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except TimeoutError:
                stalled = True
                raise ClientStalled from None

        async def bounded() -> None:
            try:
                async with asyncio.timeout(self.life_s):
                    await self.app(scope, limited_receive, send_with_id)
            except TimeoutError:
                log.warning("request %s abandoned: still running after %.0f s", request_id, self.life_s)
                if not started:
                    await _reject(send, request_id, 504, "timeout", "the request took too long", path=path)
            except Exception:
                # Starlette may wrap it in an exception group: the flag says what happened.
                if not stalled:
                    raise
                log.warning("request %s abandoned: its client read nothing for %.0f s", request_id, self.send_timeout_s)

        metrics = _metrics_of(scope)
        if metrics is None:  # the service is not built yet (start-up) or this is not our app
            await bounded()
            return
        metrics.in_flight.inc()
        try:
            await bounded()
        finally:
            metrics.in_flight.dec()
            # The route's template (/speakers/{speaker_id}/portrait), never the raw path: one series a route.
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.requests.labels(route, str(status)).inc()

    def _host_allowed(self, host_header: str) -> bool:
        host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        host = host.strip("[]").lower()
        for allowed in self.allowed_hosts:
            if allowed == "*" or host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
                return True
        return False


class ClientStalled(Exception):
    """The client read nothing for the send timeout; the request is abandoned."""


def _metrics_of(scope: Scope):
    service = getattr(getattr(scope.get("app"), "state", None), "service", None)
    return getattr(service, "metrics", None)


async def _reject(send: Send, request_id: str, status: int, type_: str, message: str, *, path: str = "") -> None:
    body = json.dumps(error_body(status, type_, message, path=path)).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
