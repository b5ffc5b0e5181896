"""The one tail of every endpoint that speaks: open the reply (cancelled if the client leaves),
then answer it as the endpoint wants — an audio file streamed or whole, server-sent events, or
one JSON document. Which of those an endpoint wants is its own business; how is decided here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from chat2audio.codecs import StreamEncoder, choose_output_rate
from chat2audio.http.encoders import (
    AudioStreamResponse,
    OpenedReply,
    encoded_stream,
    open_reply,
    text_headers,
    timing_headers,
    whole_file,
)
from chat2audio.http.errors import ClientGone
from chat2audio.service import Caller, ReplyEvent

T = TypeVar("T")
SSE_PING_S = 15  # keeps proxies from closing a quiet event stream (a long first sentence, a queue)


@dataclass(frozen=True)
class AudioAnswer:
    """The reply's audio as a file: `format` (a codecs.AUDIO_FORMATS name) streamed as it is
    synthesized or whole, at `output_rate` (None: the voice's own), sent as `media_type` (empty:
    the format's own)."""

    format: str
    streaming: bool
    output_rate: int | None = None
    media_type: str = ""


@dataclass(frozen=True)
class EventsAnswer:
    """Server-sent events that `body` makes of the reply, carrying its audio as `audio` says
    (for the X-Sample-Rate header)."""

    body: Callable[[OpenedReply], AsyncIterator[ServerSentEvent]]
    audio: AudioAnswer | None = None


@dataclass(frozen=True)
class JsonAnswer:
    """One JSON document that `body` makes of the whole reply."""

    body: Callable[[OpenedReply], Awaitable[Any]]


def caller_of(request: Request) -> Caller:
    """The service's view of this request: streaming in the stream app."""
    return Caller(
        request_id=request.state.request_id, endpoint=getattr(request.scope.get("route"), "path", "unmatched"),
        arrived=request.state.started, streaming=request.app.state.streaming,
    )


async def respond_audio(
    request: Request, events: AsyncIterator[ReplyEvent], answer: AudioAnswer | EventsAnswer | JsonAnswer
) -> Response:
    """Wait for the reply's first item, so that a failure before any audio (unknown voice,
    upstream down, overload) is still an ordinary error response, then answer it."""
    reply = await unless_client_leaves(request, open_reply(events, request.state.request_id, request.state.started))
    headers = {"X-Speaker": reply.started.speaker, "X-Sample-Rate": str(reply.started.sample_rate), "Cache-Control": "no-store"}
    try:
        return await _answer(request, reply, answer, headers)
    except BaseException:
        await reply.rest.aclose()
        raise


async def _answer(request: Request, reply: OpenedReply, answer: AudioAnswer | EventsAnswer | JsonAnswer, headers: dict[str, str]) -> Response:
    if isinstance(answer, EventsAnswer):
        if (audio := answer.audio) is not None:
            headers["X-Sample-Rate"] = str(audio.output_rate or choose_output_rate(audio.format, reply.started.sample_rate))
        return EventSourceResponse(answer.body(reply), headers=headers, ping=SSE_PING_S, sep="\n")
    if isinstance(answer, JsonAnswer):
        document = await unless_client_leaves(request, answer.body(reply))
        return Response(json.dumps(document, ensure_ascii=False), media_type="application/json", headers=headers)
    if answer.streaming:
        encoder = StreamEncoder(answer.format, reply.started.sample_rate, output_rate=answer.output_rate)
        headers["X-Sample-Rate"] = str(encoder.output_rate)
        return AudioStreamResponse(encoded_stream(reply, encoder), media_type=answer.media_type or encoder.media_type, headers=headers)
    whole = await unless_client_leaves(request, whole_file(reply, answer.format, output_rate=answer.output_rate))
    headers |= text_headers(whole.finished) | timing_headers(whole.words)
    headers |= {"X-Sample-Rate": str(whole.sample_rate), "X-Audio-Seconds": f"{whole.seconds:.3f}"}
    return Response(whole.data, media_type=answer.media_type or whole.media_type, headers=headers)


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it the moment the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
