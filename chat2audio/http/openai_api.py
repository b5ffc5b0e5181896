"""The OpenAI-compatible API under `/v1`: what the `openai` SDK and the clients built on it call.

- `POST /v1/audio/speech`: a text spoken verbatim in a speaker's voice, in OpenAI's formats,
  streamed as it is synthesized (or as server-sent `speech.audio.delta` events);
- `POST /v1/chat/completions`: the character's reply to the client's own conversation, as text,
  or with `modalities: ["text", "audio"]` as transcript + audio (whole, or one chunk a sentence);
- `GET /v1/models`, `/v1/audio/models`, `/v1/audio/voices`: discovery.

A `voice` is a speaker id; OpenAI's stock names map to speakers (`openai_voices` in a speaker
file, else CHAT2AUDIO_OPENAI_DEFAULT_VOICE). Errors have OpenAI's shape (see http/errors.py).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sse_starlette import ServerSentEvent

from chat2audio.codecs import StreamEncoder
from chat2audio.context import estimate_tokens
from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.http.encoders import AUDIO_AND_EVENT_MEDIA_TYPES, OpenedReply, encoded_audio, whole_file, word_infos
from chat2audio.http.errors import error_detail
from chat2audio.http.responders import AudioAnswer, EventsAnswer, JsonAnswer, caller_of, respond_audio
from chat2audio.pipeline import ReplyFinished, SentenceDone
from chat2audio.protocol.openai import (
    CHAT_MODEL,
    PCM_RATE,
    SPEECH_MODELS,
    ChatCompletionRequest,
    OpenAIError,
    SpeechRequest,
    Voice,
    VoiceRef,
    chat_messages,
)
from chat2audio.service import ChatService
from chat2audio.speakers import Speaker
from chat2audio.voices import openai_voices, speaker_for_voice
from llm.base import ChatMessage

log = logging.getLogger(__name__)

router = protected_router("/v1", error_model=OpenAIError, statuses=(400,))

AUDIO_EXPIRES_S = 3600
STARTED_AT = int(time.time())


# -- speech ----------------------------------------------------------------------------------------


@router.post(
    "/audio/speech", response_class=Response, responses={200: {"content": {media: {} for media in AUDIO_AND_EVENT_MEDIA_TYPES}}}
)
async def speech(body: SpeechRequest, request: Request, service: ServiceDep) -> Response:
    """Speak `input` in the voice's speaker, streamed as each piece is synthesized."""
    speaker = _speaker(service, body.voice, param="voice")
    pcm_rate = PCM_RATE if body.response_format == "pcm" else None
    events = service.speak_text(speaker.id, body.input, caller=caller_of(request), speed=body.speed)
    if body.stream_format == "sse":
        audio = AudioAnswer(body.response_format, streaming=True, output_rate=pcm_rate)
        return await respond_audio(request, events, EventsAnswer(lambda reply: _speech_events(reply, audio, body.input), audio))
    answer = AudioAnswer(body.response_format, streaming=request.app.state.streaming, output_rate=pcm_rate)
    return await respond_audio(request, events, answer)


async def _speech_events(reply: OpenedReply, audio: AudioAnswer, text: str) -> AsyncIterator[ServerSentEvent]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio, then `speech.audio.done`
    with usage (input tokens estimated from the text; this server counts no audio tokens); or,
    when synthesis fails or times out on the way, an `error` event in OpenAI's error shape (as the
    chat-completions stream reports one) instead of the done event: the audio is incomplete."""
    try:
        encoder = StreamEncoder(audio.format, reply.started.sample_rate, output_rate=audio.output_rate)
        async with aclosing(encoded_audio(reply, encoder)) as pieces:
            async for data in pieces:
                yield ServerSentEvent(data=json.dumps({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}))
    except Exception as error:
        yield ServerSentEvent(data=json.dumps({"type": "error", "error": _stream_error(error, reply.request_id)}))
        return
    tokens = estimate_tokens([ChatMessage("user", text)])
    usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}
    yield ServerSentEvent(data=json.dumps({"type": "speech.audio.done", "usage": usage}))


# -- chat completions --------------------------------------------------------------------------------


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request, service: ServiceDep) -> Response:
    """The character's reply to the client's conversation (stateless, as OpenAI's): as text, or
    with `modalities: ["text", "audio"]` and `audio: {voice, format}` as transcript + audio."""
    body.check()
    if body.audio_format is not None:
        speaker = _speaker(service, body.audio.voice, param="audio.voice")
    else:
        speaker = _speaker(service, body.audio.voice if body.audio else body.model, param="model", fallback=True)
    caller = caller_of(request)
    events = service.reply_to_messages(body.options(speaker.id), chat_messages(body.messages), caller=caller)
    completion = _Completion(f"chatcmpl-{caller.request_id}", body.model, body.audio_format)
    answer = EventsAnswer(completion.chunks) if body.stream else JsonAnswer(completion.whole)
    return await respond_audio(request, events, answer)


class _Completion:
    """One chat completion being answered, whole or chunk by chunk (a chunk per sentence); with
    `audio_format`, the transcript comes with its audio."""

    def __init__(self, completion_id: str, model: str, audio_format: str | None) -> None:
        self.id, self.model, self.audio_format = completion_id, model, audio_format
        self.created = int(time.time())

    def _output_rate(self) -> int | None:
        return PCM_RATE if self.audio_format == "pcm" else None

    async def whole(self, reply: OpenedReply) -> dict[str, Any]:
        whole = await whole_file(reply, self.audio_format, output_rate=self._output_rate())
        message: dict[str, Any] = {"role": "assistant", "content": whole.finished.text, "refusal": None}
        if self.audio_format is not None:
            message["content"] = None  # as OpenAI's audio replies: the words are the transcript
            message["audio"] = {
                "id": f"audio_{reply.request_id}", "data": base64.b64encode(whole.data).decode(),
                "expires_at": self.created + AUDIO_EXPIRES_S, "transcript": whole.finished.text,
                # ours: when each word is heard, from the audio's start (null: the voice does not say)
                "words": None if whole.words is None else [word.model_dump() for word in whole.words],
            }
        choice = {"index": 0, "message": message, "finish_reason": whole.finished.finish_reason, "logprobs": None}
        return self._envelope("chat.completion", choice)

    async def chunks(self, reply: OpenedReply) -> AsyncIterator[ServerSentEvent]:
        """A chunk with the role, one per sentence (transcript piece, and its audio), a last one
        with the finish reason, then `[DONE]`; an error after the start comes as an error chunk."""
        encoder = None
        if self.audio_format is not None:
            encoder = StreamEncoder(self.audio_format, reply.started.sample_rate, output_rate=self._output_rate())
        audio_id = f"audio_{reply.request_id}"
        yield self._chunk({"role": "assistant", "content": ""} if encoder is None else {"role": "assistant"})
        finish_reason = "stop"
        try:
            async with aclosing(reply.rest):
                async for item in reply.items():
                    if isinstance(item, ReplyFinished):
                        finish_reason = item.finish_reason
                        if encoder is not None and (tail := encoder.finish()):
                            yield self._chunk({"audio": {"id": audio_id, "data": base64.b64encode(tail).decode()}})
                    elif isinstance(item, SentenceDone):
                        piece = item.separator + item.text
                        if encoder is None:
                            yield self._chunk({"content": piece})
                        else:
                            data = base64.b64encode(encoder.encode(item.audio)).decode()
                            yield self._chunk({"audio": {"id": audio_id, "transcript": piece, "data": data} | _cues(item)})
        except Exception as error:
            yield ServerSentEvent(data=json.dumps({"error": _stream_error(error, reply.request_id)}))
            return
        finally:
            if encoder is not None:
                encoder.close()
        yield self._chunk({}, finish_reason=finish_reason)
        yield ServerSentEvent(data="[DONE]")

    def _chunk(self, delta: dict[str, Any], *, finish_reason: str | None = None) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return ServerSentEvent(data=json.dumps(self._envelope("chat.completion.chunk", choice), ensure_ascii=False))

    def _envelope(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}


def _cues(sentence: SentenceDone) -> dict[str, Any]:
    """Our fields on a streamed sentence's audio (clients that do not know them ignore them): its
    style, where it starts in the reply's audio, and its words' timings from there (as the
    events format's)."""
    words = word_infos(sentence)
    return {
        "style": sentence.style, "offset_s": round(sentence.offset_s, 3),
        "words": None if words is None else [word.model_dump() for word in words],
    }


def _stream_error(error: Exception, request_id: str) -> dict[str, Any]:
    """An error after a stream started, in OpenAI's error shape (our error type as the code)."""
    failure = error_detail(error, request_id)
    return {"message": failure.message, "type": "server_error", "param": None, "code": failure.type}


# -- discovery -----------------------------------------------------------------------------------------


@router.get("/models")
async def models() -> dict[str, Any]:
    """The chat model and the speech model names this server accepts."""
    data = [{"id": name, "object": "model", "created": STARTED_AT, "owned_by": "chat2audio"} for name in (CHAT_MODEL, *SPEECH_MODELS)]
    return {"object": "list", "data": data}


@router.get("/audio/models")
async def audio_models() -> dict[str, Any]:
    return {"models": [{"id": name, "name": name} for name in SPEECH_MODELS]}


@router.get("/audio/voices")
async def audio_voices(service: ServiceDep) -> dict[str, Any]:
    """The speakers that can speak now, each with the OpenAI names it answers to: those its file
    claims, and, for the default voice, the stock names no file claims."""
    return {"voices": openai_voices(service.registry, service.settings.openai_default_voice)}


def _speaker(service: ChatService, voice: Voice, *, param: str, fallback: bool = False) -> Speaker:
    name = voice.id if isinstance(voice, VoiceRef) else voice
    return speaker_for_voice(service.registry, service.settings.openai_default_voice, name, param=param, fallback=fallback)
