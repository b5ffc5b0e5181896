"""HTTP endpoints: parse, call the service, encode. Both apps share them."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Annotated, TypeVar
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from chat2audio.audio import streaming_wav_header, to_pcm16, wav_bytes
from chat2audio.errors import Forbidden, InvalidInput, Unauthorized, UnsupportedMediaType, as_service_error
from chat2audio.pipeline import AudioChunk
from chat2audio.protocol import (
    ChatOptions,
    ChatRequest,
    DoneEvent,
    ErrorDetail,
    ErrorEvent,
    ErrorResponse,
    HealthResponse,
    SentenceEvent,
    SpeakerInfo,
    SpeakersResponse,
    StartEvent,
    SESSION_ID_PATTERN,
    SessionResponse,
    StatsResponse,
    Turn,
)
from chat2audio.service import ChatService, PreparedReply, VoiceInput

log = logging.getLogger(__name__)
T = TypeVar("T")


# Dependencies are `async def`: a plain `def` would hop to a worker thread on every request.
async def get_service(request: Request) -> ChatService:
    return request.app.state.service


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
    not: without this check any site could make the service talk and add turns to a session.
    Same-origin pages and `CHAT2AUDIO_CORS_ORIGINS` pass; clients that send no Origin (curl, SDKs) too."""
    origin = request.headers.get("origin")
    if origin is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    settings = request.app.state.service.settings
    # Host only, not scheme: behind a TLS-terminating proxy the page is https, this server http.
    same_origin = urlsplit(origin).netloc == request.headers.get("host", "")
    if not same_origin and origin not in settings.cors_origins and "*" not in settings.cors_origins:
        raise Forbidden(f"requests from the web origin {origin[:100]} are not allowed; add it to CHAT2AUDIO_CORS_ORIGINS")


@dataclass(frozen=True)
class ChatInput:
    """A parsed `POST /chat2audio`: the options, and either typed text or recorded speech."""

    options: ChatOptions
    text: str | None = None
    voice: VoiceInput | None = None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def parse_chat_request(request: Request) -> ChatInput:
    """A JSON body (`Content-Type: application/json`), or, for voice input, a multipart form
    whose `audio` file is transcribed once the request has been admitted."""
    content_type = _content_type(request)
    try:
        if content_type == "multipart/form-data":
            return await _parse_voice_request(request)
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise UnsupportedMediaType(
                f"send the request as JSON with the header Content-Type: application/json (curl: --json '{{...}}'), "
                f"or as multipart/form-data with an audio file; got {content_type[:80] or 'no content type'}"
            )
        body = ChatRequest.model_validate_json(await request.body())
        return ChatInput(options=body, text=body.input)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False, include_url=False)) from None


async def _parse_voice_request(request: Request) -> ChatInput:
    """multipart/form-data: `audio` (WAV/FLAC/OGG) plus the JSON fields as form fields."""
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("audio")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("multipart requests need an `audio` file field holding the user's speech")
    fields = {key: value for key, value in form.items() if key != "audio" and isinstance(value, str)}
    if "input" in fields:
        raise InvalidInput("send either typed `input` (as JSON) or an `audio` file, not both")
    for numeric in ("max_new_tokens", "temperature"):
        if numeric in fields:
            try:
                fields[numeric] = float(fields[numeric]) if numeric == "temperature" else int(fields[numeric])
            except ValueError:
                raise InvalidInput(f"{numeric} must be a number") from None
    options = ChatOptions.model_validate(fields)
    return ChatInput(options=options, voice=VoiceInput(await upload.read(), upload.filename))


ServiceDep = Annotated[ChatService, Depends(get_service)]
ChatInputDep = Annotated[ChatInput, Depends(parse_chat_request)]
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (401, 404, 413, 422, 503)}

router = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key), Depends(require_same_origin)], responses=ERROR_RESPONSES)


@router.get("/health", response_model=HealthResponse)
async def health(service: ServiceDep) -> HealthResponse:
    """The process is up (it answers even while models load or all slots are busy)."""
    return HealthResponse(status="ok" if service.ready else "loading")


@protected.get("/ready", response_model=HealthResponse)
async def ready(service: ServiceDep) -> JSONResponse:
    """200 once the models are loaded, 503 before (or if loading failed)."""
    if service.ready:
        return JSONResponse({"status": "ok"})
    body = {"status": "loading"} | ({"error": service.load_error} if service.load_error else {})
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@protected.get("/stats", response_model=StatsResponse)
async def stats(service: ServiceDep) -> StatsResponse:
    """Work in progress right now: lets operators (and tests) see that nothing runs for nobody."""
    return StatsResponse(
        active_replies=service.active_replies,
        admitted_requests=service.admission.admitted,
        llm_active_generations=getattr(service.llm, "active_generations", 0),
        sessions_in_turn=len(service.turn_order),
        threads=threading.active_count(),
    )


@protected.get("/speakers", response_model=SpeakersResponse)
async def list_speakers(service: ServiceDep) -> SpeakersResponse:
    infos = []
    for speaker in service.registry.all():
        engine = service.registry.engines.get(speaker.engine or "")
        rate = engine.sample_rate(speaker.voice) if engine is not None and speaker.voice is not None else None
        infos.append(
            SpeakerInfo(
                id=speaker.id, available=speaker.available, reason=speaker.reason, engine=speaker.engine,
                display_name=speaker.display_name, description=speaker.description,
                language=speaker.language, sample_rate=rate,
            )
        )
    return SpeakersResponse(speakers=infos)


@protected.post(
    "/chat2audio",
    responses={200: {"content": {"audio/wav": {}, "text/event-stream": {}}, "description": "The spoken reply."}, 415: {"model": ErrorResponse}},
    response_class=Response,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": ChatRequest.model_json_schema()}}}
    },
)
async def chat2audio(parsed: ChatInputDep, request: Request, service: ServiceDep) -> Response:
    """Reply to `input` in the speaker's character and voice."""
    body = parsed.options
    prepared = await service.prepare(body, request.state.request_id, text=parsed.text, voice=parsed.voice)
    audio = service.reply_audio(prepared, stream_first_sentence=request.app.state.streaming)
    headers = {
        "X-Sample-Rate": str(prepared.sample_rate),
        "X-Speaker": prepared.speaker.id,
        "Cache-Control": "no-store",
    }
    if body.format in ("events", "text"):
        first = await _unless_client_leaves(request, _first(audio))
        return StreamingResponse(_event_stream(request, prepared, first, audio), media_type="text/event-stream", headers=headers)
    if request.app.state.streaming:
        first = await _unless_client_leaves(request, _first(audio))
        return StreamingResponse(_wav_stream(request, prepared, first, audio), media_type="audio/wav", headers=headers)
    samples = await _unless_client_leaves(request, _collect(audio))
    reply = prepared.reply
    headers |= text_headers(reply.text, reply.spoken_text)
    headers["X-Audio-Seconds"] = f"{len(samples) / prepared.sample_rate:.3f}"
    return Response(wav_bytes(samples, prepared.sample_rate), media_type="audio/wav", headers=headers)


@protected.get("/sessions/{session_id}", response_model=SessionResponse)
async def get_session(
    service: ServiceDep,
    session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)],
    speaker: Annotated[str, Query(min_length=1, max_length=64)],
) -> SessionResponse:
    """The turns remembered for this session with this speaker (empty if none)."""
    service.registry.get(speaker, needs_voice=False)
    turns = await service.sessions.history(speaker, session_id)
    return SessionResponse(
        session_id=session_id, speaker=speaker, turns=[Turn(role=t.role, content=t.content) for t in turns]
    )


@protected.delete("/sessions/{session_id}", status_code=204, response_class=Response)
async def delete_session(service: ServiceDep, session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)]) -> Response:
    """Start the conversation over: forget this session with every speaker."""
    await service.sessions.forget(session_id)
    return Response(status_code=204)


router.include_router(protected)

# Proxies commonly refuse responses whose headers exceed 4-8 KB (nginx: 502); percent-encoded
# Chinese takes 9 bytes a character, so a long reply would not fit.
MAX_TEXT_HEADER_BYTES = 1536


def text_headers(text: str, spoken: str) -> dict[str, str]:
    """The reply's text as percent-encoded headers, each cut to `MAX_TEXT_HEADER_BYTES`; when cut,
    `X-Text-Truncated` says so (the events format carries any length)."""
    reply, reply_cut = _percent_encoded_prefix(text, MAX_TEXT_HEADER_BYTES)
    spoken, spoken_cut = _percent_encoded_prefix(spoken, MAX_TEXT_HEADER_BYTES)
    headers = {"X-Reply-Text": reply, "X-Spoken-Text": spoken}
    if reply_cut or spoken_cut:
        headers["X-Text-Truncated"] = "true; use format=events for the whole text"
    return headers


def _percent_encoded_prefix(text: str, limit: int) -> tuple[str, bool]:
    """The longest prefix of whole characters whose encoding fits `limit`, and whether it was cut."""
    pieces, size = [], 0
    for ch in text:
        piece = quote(ch, safe="")
        if size + len(piece) > limit:
            return "".join(pieces), True
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces), False


class ClientGone(Exception):
    """The client disconnected before the response started; nothing is left to answer."""


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
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


async def _first(audio: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    """Start the pipeline and wait for its first audio, so that a failure before any audio
    (unknown model, upstream down, overload) is still an ordinary JSON error response."""
    async for chunk in audio:
        if chunk.audio.size or chunk.sentence_done:
            return chunk
    return None


async def _collect(audio: AsyncIterator[AudioChunk]) -> np.ndarray:
    async with aclosing(audio):
        parts = [chunk.audio async for chunk in audio if chunk.audio.size]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


async def _wav_stream(
    request: Request, prepared: PreparedReply, first: AudioChunk | None, audio: AsyncIterator[AudioChunk]
) -> AsyncIterator[bytes]:
    async with aclosing(audio):
        yield streaming_wav_header(prepared.sample_rate) + (to_pcm16(first.audio) if first else b"")
        if first is None:
            return
        try:
            async for chunk in audio:
                if chunk.audio.size:
                    yield to_pcm16(chunk.audio)
        except Exception as error:
            # Audio has started: a WAV cannot carry an error, so log it and end the stream.
            log.error("request %s: stream ended early: %s", request.state.request_id, as_service_error(error).message, exc_info=error)


async def _event_stream(
    request: Request, prepared: PreparedReply, first: AudioChunk | None, audio: AsyncIterator[AudioChunk]
) -> AsyncIterator[str]:
    started: float = request.state.started
    rate = prepared.sample_rate
    reply = prepared.reply

    def event(model) -> str:
        return f"data: {json.dumps(model.model_dump(), ensure_ascii=False)}\n\n"

    async with aclosing(audio):
        yield event(
            StartEvent(
                request_id=request.state.request_id, speaker=prepared.speaker.id, sample_rate=rate,
                session_id=prepared.session_id, transcript=prepared.transcript,
            )
        )
        pending: list[np.ndarray] = []
        total_samples = 0
        try:
            chunks = _prepend(first, audio) if first else audio
            async for chunk in chunks:
                pending.append(chunk.audio)
                if not chunk.sentence_done:
                    continue
                samples = np.concatenate(pending)
                pending = []
                total_samples += samples.size
                spoken = prepared.engine is not None
                yield event(
                    SentenceEvent(
                        index=chunk.sentence_index,
                        text=chunk.sentence,
                        speech_text=chunk.speech if chunk.speech != chunk.sentence else None,
                        audio_wav_base64=base64.b64encode(wav_bytes(samples, rate)).decode() if spoken else None,
                        audio_seconds=samples.size / rate if spoken else 0.0,
                        elapsed_seconds=time.perf_counter() - started,
                    )
                )
            yield event(
                DoneEvent(
                    text=reply.text, spoken_text=reply.spoken_text, finish_reason=reply.finish_reason,
                    audio_seconds=total_samples / rate if rate else 0.0, elapsed_seconds=time.perf_counter() - started,
                )
            )
        except Exception as error:
            failure = as_service_error(error)
            log.error("request %s: event stream failed: %s", request.state.request_id, failure.message, exc_info=error)
            yield event(ErrorEvent(error=ErrorDetail(type=failure.type, message=failure.message)))


async def _prepend(first: AudioChunk, rest: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    yield first
    async for chunk in rest:
        yield chunk
