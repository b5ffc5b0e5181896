"""The request bounds of the ASGI middleware: a request that outlives its life is answered 504
(or, once its response started, abandoned), and a send that a client never drains gives up."""

from __future__ import annotations

import asyncio
import json

from chat2audio.http.middleware import RequestContext


def scope() -> dict:
    return {"type": "http", "method": "GET", "path": "/slow", "headers": [(b"host", b"127.0.0.1")]}


async def receive() -> dict:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


def bounded(app, **bounds) -> RequestContext:
    settings = {"send_timeout_s": 0.2, "life_s": 0.3} | bounds
    return RequestContext(app, max_body_bytes=1024, max_upload_bytes=1024, allowed_hosts=["*"], **settings)


async def test_a_request_that_outlives_its_life_is_answered_504_and_its_work_cancelled():
    sent: list[dict] = []
    cancelled = asyncio.Event()

    async def forever(scope, receive, send):
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(bounded(forever)(scope(), receive, send), 5)
    assert cancelled.is_set()
    assert sent[0]["status"] == 504 and json.loads(sent[1]["body"])["error"]["type"] == "timeout"


async def test_a_send_the_client_never_drains_abandons_the_request():
    stopped = asyncio.Event()

    async def streaming(scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        finally:
            stopped.set()

    sends = 0

    async def full_window(message):
        nonlocal sends
        sends += 1
        if sends > 3:
            await asyncio.sleep(3600)  # the client's TCP window is full and stays full

    await asyncio.wait_for(bounded(streaming, life_s=60)(scope(), receive, full_window), 5)
    assert stopped.is_set() and sends == 4
