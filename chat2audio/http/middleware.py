"""Pure ASGI middleware (not BaseHTTPMiddleware, which would break streaming and disconnects)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat2audio.http.errors import error_body


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
      uploads (voice input)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, allowed_hosts: list[str]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.allowed_hosts = allowed_hosts

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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        metrics = _metrics_of(scope)
        if metrics is None:  # the service is not built yet (start-up) or this is not our app
            await self.app(scope, limited_receive, send_with_id)
            return
        metrics.in_flight.inc()
        try:
            await self.app(scope, limited_receive, send_with_id)
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
