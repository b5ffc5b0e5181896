"""`POST /chat2audio`: parse, ask the service for the reply, encode it as the request wants."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.codecs import StreamEncoder
from chat2audio.http.encoders import (
    AUDIO_AND_EVENT_MEDIA_TYPES, AudioStreamResponse,
    encoded_stream, event_stream, open_reply, text_headers, wav_stream, whole_file, whole_wav,
)
from chat2audio.http.errors import ClientGone
from chat2audio.http.parsing import ChatInput, parse_chat_request
from chat2audio.protocol import ChatRequest, ErrorResponse

T = TypeVar("T")
SSE_PING_S = 15  # keeps proxies from closing a quiet event stream (a long first sentence, a queue)

router = protected_router()


@router.post(
    "/chat2audio",
    responses={
        200: {"content": {media_type: {} for media_type in AUDIO_AND_EVENT_MEDIA_TYPES}, "description": "The spoken reply."},
        415: {"model": ErrorResponse},
    },
    response_class=Response,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}
    },
)
async def chat2audio(parsed: Annotated[ChatInput, Depends(parse_chat_request)], request: Request, service: ServiceDep) -> Response:
    """Reply to `input` in the speaker's character and voice."""
    streaming = request.app.state.streaming
    request_id = request.state.request_id
    events = service.reply(
        parsed.options, text=parsed.text, voice=parsed.voice, request_id=request_id, stream_first_sentence=streaming
    )
    # Wait for the first audio, so that a failure before any (unknown model, upstream down,
    # overload) is still an ordinary JSON error response.
    reply = await unless_client_leaves(request, open_reply(events, request))
    headers = {
        "X-Sample-Rate": str(reply.started.sample_rate), "X-Speaker": reply.started.speaker, "Cache-Control": "no-store",
    }
    if parsed.options.format in ("events", "text"):
        return EventSourceResponse(event_stream(reply), headers=headers, ping=SSE_PING_S, sep="\n")
    if parsed.options.format != "wav":
        if streaming:
            encoder = StreamEncoder(parsed.options.format, reply.started.sample_rate)
            headers["X-Sample-Rate"] = str(encoder.output_rate)
            return AudioStreamResponse(encoded_stream(reply, encoder), media_type=encoder.media_type, headers=headers)
        audio, media_type, rate = await unless_client_leaves(request, whole_file(reply, parsed.options.format))
        return Response(audio, media_type=media_type, headers=headers | {"X-Sample-Rate": str(rate)})
    if streaming:
        return AudioStreamResponse(wav_stream(reply), media_type="audio/wav", headers=headers)
    audio, finished, seconds = await unless_client_leaves(request, whole_wav(reply))
    headers |= text_headers(finished) | {"X-Audio-Seconds": f"{seconds:.3f}"}
    return Response(audio, media_type="audio/wav", headers=headers)


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
