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
from typing import Annotated, Any, Literal

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from chat2audio.codecs import StreamEncoder
from chat2audio.context import estimate_tokens
from chat2audio.errors import InvalidInput, UnknownVoice
from chat2audio.http.chat import SSE_PING_S, unless_client_leaves
from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.http.encoders import (
    AUDIO_AND_EVENT_MEDIA_TYPES, AudioStreamResponse, OpenedReply, encoded_audio, encoded_stream, open_reply, whole_file,
)
from chat2audio.http.errors import error_detail
from chat2audio.pipeline import ReplyFinished, join_sentences
from chat2audio.protocol import ChatOptions
from chat2audio.service import ChatService
from chat2audio.speakers import OPENAI_STOCK_VOICES, Speaker
from llm.base import ChatMessage

log = logging.getLogger(__name__)

class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


router = protected_router("/v1", error_model=OpenAIError, statuses=(400,))

SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # accepted; every one is our TTS
CHAT_MODEL = "chat2audio"
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
PCM_RATE = 24000  # OpenAI's `pcm` / `pcm16`: headerless s16le mono at 24 kHz
AUDIO_EXPIRES_S = 3600
STARTED_AT = int(time.time())


# -- requests ------------------------------------------------------------------------------------


class VoiceRef(BaseModel):
    id: str = Field(min_length=1, max_length=64)


Voice = Annotated[str, Field(min_length=1, max_length=64)] | VoiceRef


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body. Unknown fields are ignored: the SDK adds new ones."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("tts-1", description="Any value; every model is this server's TTS.")
    input: str = Field(min_length=1, description="The text to speak, verbatim; at most CHAT2AUDIO_MAX_INPUT_CHARS characters.")
    voice: Voice = Field(description="A speaker id (GET /v1/audio/voices) or an OpenAI voice name mapped to one.")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Scales the voice's own speed, within what its engine allows.")
    instructions: str | None = Field(None, max_length=4096, description="Accepted; these voices cannot follow them.")
    stream_format: Literal["audio", "sse"] = "audio"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    voice: Voice
    format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"] = "wav"


StopText = Annotated[str, Field(min_length=1, max_length=64)]


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions body, the parts a character's reply uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(CHAT_MODEL, description="A speaker id picks the character when there is no audio.voice.")
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] = Field(default_factory=lambda: ["text"])
    audio: AudioOutput | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**53), le=2**53, description="The same seed and request give the same reply.")
    stop: StopText | list[StopText] | None = Field(None, description="Up to 4 texts that end the reply where it writes them.")
    n: int | None = Field(None, ge=1, description="Only 1: one reply (one voice) per request.")


# -- speech ----------------------------------------------------------------------------------------


@router.post(
    "/audio/speech", response_class=Response, responses={200: {"content": {media: {} for media in AUDIO_AND_EVENT_MEDIA_TYPES}}}
)
async def speech(body: SpeechRequest, request: Request, service: ServiceDep) -> Response:
    """Speak `input` in the voice's speaker, streamed as each piece is synthesized."""
    speaker = _speaker_for(service, body.voice, param="voice")
    pcm_rate = PCM_RATE if body.response_format == "pcm" else None
    events = service.speak_text(
        speaker.id, body.input, request_id=request.state.request_id, speed=body.speed,
        stream_first_sentence=request.app.state.streaming,
    )
    reply = await unless_client_leaves(request, open_reply(events, request))
    headers = {"X-Speaker": speaker.id, "Cache-Control": "no-store"}
    if not request.app.state.streaming and body.stream_format == "audio":
        audio, media_type, rate = await unless_client_leaves(request, whole_file(reply, body.response_format, output_rate=pcm_rate))
        return Response(audio, media_type=media_type, headers=headers | {"X-Sample-Rate": str(rate)})
    encoder = StreamEncoder(body.response_format, reply.started.sample_rate, output_rate=pcm_rate)
    headers["X-Sample-Rate"] = str(encoder.output_rate)
    if body.stream_format == "sse":
        return EventSourceResponse(_speech_events(reply, encoder, body.input), headers=headers, ping=SSE_PING_S, sep="\n")
    return AudioStreamResponse(encoded_stream(reply, encoder), media_type=encoder.media_type, headers=headers)


async def _speech_events(reply: OpenedReply, encoder: StreamEncoder, text: str) -> AsyncIterator[ServerSentEvent]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio, then `speech.audio.done`
    with usage (input tokens estimated from the text; this server counts no audio tokens); or,
    when synthesis fails or times out on the way, an `error` event in OpenAI's error shape (as the
    chat-completions stream reports one) instead of the done event: the audio is incomplete."""
    try:
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
    if body.n is not None and body.n > 1:
        raise InvalidInput(f"n={body.n}: this server gives one choice per request; send n=1 (or none)", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    if stop is not None and len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidInput(f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    wants_audio = "audio" in body.modalities
    if wants_audio and body.audio is None:
        raise InvalidInput('modalities ["text", "audio"] need audio: {"voice": ..., "format": ...}', param="audio")
    if wants_audio:
        speaker = _speaker_for(service, body.audio.voice, param="audio.voice")
    else:
        speaker = _speaker_for(service, body.audio.voice if body.audio else body.model, param="model", fallback=True)
    options = ChatOptions(
        speaker=speaker.id, format="events" if wants_audio else "text",
        max_new_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, seed=body.seed, stop=stop,
    )
    request_id = request.state.request_id
    events = service.reply_to_messages(
        options, _chat_messages(body.messages), request_id=request_id, stream_first_sentence=request.app.state.streaming
    )
    reply = await unless_client_leaves(request, open_reply(events, request))
    encoder = None
    if wants_audio:
        audio_format = "pcm" if body.audio.format == "pcm16" else body.audio.format
        encoder = StreamEncoder(audio_format, reply.started.sample_rate, output_rate=PCM_RATE if audio_format == "pcm" else None)
    completion = _Completion(f"chatcmpl-{request_id}", body.model, reply, encoder)
    if body.stream:
        return EventSourceResponse(completion.chunks(), ping=SSE_PING_S, sep="\n", headers={"Cache-Control": "no-store"})
    return Response(json.dumps(await completion.whole(), ensure_ascii=False), media_type="application/json")


class _Completion:
    """One chat completion being answered, whole or chunk by chunk (a chunk per sentence)."""

    def __init__(self, completion_id: str, model: str, reply: OpenedReply, encoder: StreamEncoder | None) -> None:
        self.id, self.model, self.reply, self.encoder = completion_id, model, reply, encoder
        self.created = int(time.time())
        self.audio_id = f"audio_{reply.request_id}"

    async def whole(self) -> dict[str, Any]:
        spoken: list[str] = []
        audio = bytearray()
        finished: ReplyFinished | None = None
        try:
            async with aclosing(self.reply.rest):
                async for item in self.reply.items():
                    if isinstance(item, ReplyFinished):
                        finished = item
                    elif item.sentence_done:
                        spoken.append(item.sentence)
                    elif self.encoder is not None and item.audio.size:
                        audio += self.encoder.encode(item.audio)
            if self.encoder is not None:
                audio += self.encoder.finish()
        finally:
            if self.encoder is not None:
                self.encoder.close()
        assert finished is not None
        message: dict[str, Any] = {"role": "assistant", "content": finished.text, "refusal": None}
        if self.encoder is not None:
            message["content"] = None  # as OpenAI's audio replies: the words are the transcript
            message["audio"] = {
                "id": self.audio_id, "data": base64.b64encode(bytes(audio)).decode(),
                "expires_at": self.created + AUDIO_EXPIRES_S, "transcript": finished.text,
            }
        choice = {"index": 0, "message": message, "finish_reason": finished.finish_reason, "logprobs": None}
        return self._envelope("chat.completion", choice)

    async def chunks(self) -> AsyncIterator[ServerSentEvent]:
        """A chunk with the role, one per sentence (transcript piece, and its audio), a last one
        with the finish reason, then `[DONE]`; an error after the start comes as an error chunk."""
        yield self._chunk({"role": "assistant", "content": ""} if self.encoder is None else {"role": "assistant"})
        said: list[str] = []
        finish_reason = "stop"
        pending = bytearray()
        try:
            async with aclosing(self.reply.rest):
                async for item in self.reply.items():
                    if isinstance(item, ReplyFinished):
                        finish_reason = item.finish_reason
                        if self.encoder is not None and (tail := self.encoder.finish()):
                            yield self._chunk({"audio": {"id": self.audio_id, "data": base64.b64encode(tail).decode()}})
                        continue
                    if self.encoder is not None and item.audio.size:
                        pending += self.encoder.encode(item.audio)
                    if not item.sentence_done:
                        continue
                    before = join_sentences(said)
                    said.append(item.sentence)
                    piece = join_sentences(said)[len(before):]
                    if self.encoder is None:
                        yield self._chunk({"content": piece})
                    else:
                        audio = {"id": self.audio_id, "transcript": piece, "data": base64.b64encode(bytes(pending)).decode()}
                        pending.clear()
                        yield self._chunk({"audio": audio})
        except Exception as error:
            yield ServerSentEvent(data=json.dumps({"error": _stream_error(error, self.reply.request_id)}))
            return
        finally:
            if self.encoder is not None:
                self.encoder.close()
        yield self._chunk({}, finish_reason=finish_reason)
        yield ServerSentEvent(data="[DONE]")

    def _chunk(self, delta: dict[str, Any], *, finish_reason: str | None = None) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return ServerSentEvent(data=json.dumps(self._envelope("chat.completion.chunk", choice), ensure_ascii=False))

    def _envelope(self, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}


def _stream_error(error: Exception, request_id: str) -> dict[str, Any]:
    """An error after a stream started, in OpenAI's error shape (our error type as the code)."""
    failure = error_detail(error, request_id)
    return {"message": failure.message, "type": "server_error", "param": None, "code": failure.type}


def _chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """OpenAI messages as ours: "developer" is a system message, text parts are joined; tool
    calls and non-text parts (images, input audio) are refused by name."""
    converted = []
    for index, message in enumerate(messages):
        if message.role in ("tool", "function"):
            raise InvalidInput(f"messages[{index}]: {message.role} messages are not supported", param=f"messages[{index}].role")
        if isinstance(message.content, list):
            other = [part.type for part in message.content if part.type != "text"]
            if other:
                raise InvalidInput(
                    f"messages[{index}]: only text content is supported, not {', '.join(sorted(set(other)))}",
                    param=f"messages[{index}].content",
                )
            content = "".join(part.text or "" for part in message.content)
        else:
            content = message.content or ""
        role = "system" if message.role == "developer" else message.role
        converted.append(ChatMessage(role, content))
    return converted


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
    speakers = service.registry.all()
    claimed = {name.lower() for speaker in speakers for name in speaker.openai_voices}
    unclaimed = [name for name in OPENAI_STOCK_VOICES if name not in claimed]

    def aliases(speaker: Speaker) -> list[str]:
        default = speaker.id == service.settings.openai_default_voice
        return sorted({*speaker.openai_voices, *(unclaimed if default else [])})

    return {
        "voices": [
            {"id": speaker.id, "name": speaker.display_name or speaker.id, "aliases": aliases(speaker)}
            for speaker in speakers if speaker.available
        ]
    }


def _speaker_for(service: ChatService, voice: str | VoiceRef, *, param: str, fallback: bool = False) -> Speaker:
    """The speaker a voice (or, with `fallback`, a model name) stands for. With `fallback`, a
    name that is no speaker means the default voice's speaker (a chat model name like "gpt-4o").
    A voice that cannot speak here is the client's 400, not a 503 its SDK would retry in vain."""
    name = voice.id if isinstance(voice, VoiceRef) else voice
    default = service.settings.openai_default_voice or None
    speaker = service.registry.for_voice(name, default)
    if speaker is None and fallback and default:
        speaker = service.registry.for_voice(default, None)
    if speaker is None:
        speaking = [s.id for s in service.registry.all() if s.available]
        stock = f"; OpenAI's names ({', '.join(OPENAI_STOCK_VOICES)}) map to {default}" if default else ""
        raise UnknownVoice(f"unknown voice {name[:64]!r}; voices: {', '.join(speaking) or '(none)'}{stock}", param=param)
    current = service.registry.get(speaker.id, needs_voice=False) if speaker.can_chat else speaker
    if not fallback and not current.available:
        raise InvalidInput(f"voice {name[:64]!r} ({speaker.id}) cannot speak on this server: {current.reason}", param=param)
    return speaker
