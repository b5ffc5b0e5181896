"""`POST /chat2audio`: parse, ask the service for the reply, encode it as the request wants."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.http.encoders import AUDIO_AND_EVENT_MEDIA_TYPES, event_stream
from chat2audio.http.parsing import ChatInput, parse_chat_request
from chat2audio.http.responders import AudioAnswer, EventsAnswer, caller_of, respond_audio
from chat2audio.protocol.chat import ChatRequest, ErrorResponse, event_schema

router = protected_router()


@router.post(
    "/chat2audio",
    responses={
        200: {
            "content": {
                media_type: {"schema": event_schema()} if media_type == "text/event-stream" else {}
                for media_type in AUDIO_AND_EVENT_MEDIA_TYPES
            },
            "description": "The spoken reply. With format events or text: server-sent events, each `data:` line one "
            "JSON event (schema here).",
        },
        415: {"model": ErrorResponse},
    },
    response_class=Response,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}
    },
)
async def chat2audio(parsed: Annotated[ChatInput, Depends(parse_chat_request)], request: Request, service: ServiceDep) -> Response:
    """Reply to `input` in the speaker's character and voice."""
    events = service.reply(parsed.options, text=parsed.text, voice=parsed.voice, caller=caller_of(request))
    audio_format = parsed.options.format
    if audio_format in ("events", "text"):
        return await respond_audio(request, events, EventsAnswer(event_stream))
    return await respond_audio(request, events, AudioAnswer(audio_format, streaming=request.app.state.streaming))
