"""Pure ASGI middleware (not BaseHTTPMiddleware, which would break streaming and disconnects)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat2audio.errors import error_body


class RequestContext:
    """Gives every request an id (echoed as X-Request-Id) and a start time, and rejects bodies
    over the limit with 413 before the endpoint reads them: `max_body_bytes` for JSON,
    `max_upload_bytes` for multipart uploads (voice input)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()

        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.max_upload_bytes if multipart else self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._reject(send, request_id, limit)
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, limited_receive, send_with_id)

    async def _reject(self, send: Send, request_id: str, limit: int) -> None:
        body = json.dumps(error_body(413, "body_too_large", f"request body is over {limit} bytes")).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body})
