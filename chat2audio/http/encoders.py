"""A reply's events as bytes on the wire: a streamed WAV or compressed audio, server-sent events,
or one WAV file.

Each encoder gets the reply already opened (its ReplyStarted and first audible items, so that a
failure before any audio was still an ordinary JSON error) and the rest of the stream. Once a
stream has started, an error is reported inside it (events) or ends it early (WAV) and the
stream still ends cleanly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse
from sse_starlette import ServerSentEvent
from starlette.types import Receive, Scope, Send

from chat2audio.audio import streaming_wav_header, to_pcm16, wav_bytes
from chat2audio.codecs import MEDIA_TYPES, StreamEncoder
from chat2audio.http.errors import error_detail
from chat2audio.pipeline import AudioChunk, ReplyFinished
from chat2audio.protocol import DoneEvent, ErrorDetail, ErrorEvent, SentenceEvent, StartEvent
from chat2audio.service import ReplyEvent, ReplyStarted

log = logging.getLogger(__name__)

# What an audio endpoint may answer: any encoder's format, or server-sent events.
AUDIO_AND_EVENT_MEDIA_TYPES = sorted({*MEDIA_TYPES.values(), "text/event-stream"})

# Proxies commonly refuse responses whose headers exceed 4-8 KB (nginx: 502); percent-encoded
# Chinese takes 9 bytes a character, so a long reply would not fit.
MAX_TEXT_HEADER_BYTES = 1536


@dataclass
class OpenedReply:
    """A reply whose first audible item (or its end) has arrived, and the rest of its stream."""

    started: ReplyStarted
    head: list[AudioChunk | ReplyFinished]
    rest: AsyncIterator[ReplyEvent]
    request_id: str
    arrived: float  # perf_counter() when the request arrived

    async def items(self) -> AsyncIterator[AudioChunk | ReplyFinished]:
        for item in self.head:
            yield item
        async for item in self.rest:
            yield item  # type: ignore[misc]  # ReplyStarted comes first, never again


CLOSE_BODY_S = 5.0  # a reply's clean-up (stopping its pipeline) is quick; never wait on it forever


class AudioStreamResponse(StreamingResponse):
    """A StreamingResponse that closes its body (and so the reply: its slot, its model work) the
    moment the response ends, however it ends. Starlette leaves a body whose `send` failed (a
    client that stopped reading, see http/middleware.py) suspended at its `yield` until the
    garbage collector finds it, which held the reply's slot for as long. (sse_starlette's
    EventSourceResponse closes its body itself.)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.move_on_after(CLOSE_BODY_S, shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def open_reply(events: AsyncIterator[ReplyEvent], request: Request) -> OpenedReply:
    """Run the reply until its first audio (or first sentence, or its end); the time its first
    audio took since the request arrived goes to the TTFA histogram of the request's route."""
    arrived = request.state.started
    started: ReplyStarted | None = None
    head: list[AudioChunk | ReplyFinished] = []
    async for event in events:
        if isinstance(event, ReplyStarted):
            started = event
            continue
        head.append(event)
        if isinstance(event, AudioChunk) and event.audio.size:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            request.app.state.service.metrics.time_to_first_audio.labels(route).observe(_since(arrived))
        if isinstance(event, ReplyFinished) or event.audio.size or event.sentence_done:
            break
    assert started is not None, "a reply starts with ReplyStarted"
    return OpenedReply(started, head, events, request.state.request_id, arrived)


async def wav_stream(reply: OpenedReply) -> AsyncIterator[bytes]:
    """A WAV header whose sizes mean "unknown length", then PCM as it is synthesized."""
    async with aclosing(reply.rest):
        yield streaming_wav_header(reply.started.sample_rate)
        try:
            async for item in reply.items():
                if isinstance(item, AudioChunk) and item.audio.size:
                    yield to_pcm16(item.audio)
        except Exception as error:
            # Audio has started: a WAV cannot carry an error, so log it and end the stream.
            failure = error_detail(error, reply.request_id)
            log.error("request %s: stream ended early: %s", reply.request_id, failure.message)


async def encoded_audio(reply: OpenedReply, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """The reply's audio through `encoder` (mp3, opus, …), each piece as soon as the codec gives
    it; a failure on the way is raised, for a stream that can report it (events)."""
    try:
        async with aclosing(reply.rest):
            async for item in reply.items():
                if isinstance(item, AudioChunk) and item.audio.size and (data := encoder.encode(item.audio)):
                    yield data
            if data := encoder.finish():
                yield data
    finally:
        encoder.close()


async def encoded_stream(reply: OpenedReply, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """`encoded_audio` as a plain audio stream: once audio has started an error can only end
    the stream early (and is logged)."""
    try:
        async with aclosing(encoded_audio(reply, encoder)) as pieces:
            async for data in pieces:
                yield data
    except Exception as error:
        log.error("request %s: stream ended early: %s", reply.request_id, error_detail(error, reply.request_id).message)


async def event_stream(reply: OpenedReply) -> AsyncIterator[ServerSentEvent]:
    """`start`, one `sentence` event per sentence (its text and its audio as a WAV), then `done`
    with the whole reply, or `error`."""
    started, rate = reply.started, reply.started.sample_rate

    def event(model) -> ServerSentEvent:
        return ServerSentEvent(data=json.dumps(model.model_dump(), ensure_ascii=False))

    async with aclosing(reply.rest):
        yield event(StartEvent(
            request_id=reply.request_id, speaker=started.speaker, sample_rate=rate,
            session_id=started.session_id, transcript=started.transcript,
        ))
        pending: list[np.ndarray] = []
        total_samples = 0
        try:
            async for item in reply.items():
                if isinstance(item, ReplyFinished):
                    yield event(DoneEvent(
                        text=item.text, spoken_text=item.spoken_text, finish_reason=item.finish_reason,
                        audio_seconds=total_samples / rate if rate else 0.0, elapsed_seconds=_since(reply.arrived),
                    ))
                    continue
                pending.append(item.audio)
                if not item.sentence_done:
                    continue
                samples, pending = np.concatenate(pending), []
                total_samples += samples.size
                yield event(SentenceEvent(
                    index=item.sentence_index, text=item.sentence,
                    speech_text=item.speech if item.speech != item.sentence else None,
                    audio_wav_base64=base64.b64encode(wav_bytes(samples, rate)).decode() if rate else None,
                    audio_seconds=samples.size / rate if rate else 0.0, elapsed_seconds=_since(reply.arrived),
                ))
        except Exception as error:
            failure = error_detail(error, reply.request_id)
            yield event(ErrorEvent(error=ErrorDetail(type=failure.type, message=failure.message)))


async def _all_of(reply: OpenedReply) -> tuple[np.ndarray, ReplyFinished]:
    """Every sample of the reply, and its end; a failure on the way is raised (nothing was sent)."""
    parts: list[np.ndarray] = []
    finished: ReplyFinished | None = None
    async with aclosing(reply.rest):
        async for item in reply.items():
            if isinstance(item, ReplyFinished):
                finished = item
            elif item.audio.size:
                parts.append(item.audio)
    assert finished is not None
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), finished


async def whole_wav(reply: OpenedReply) -> tuple[bytes, ReplyFinished, float]:
    """The complete WAV, what was said, and its length in seconds."""
    samples, finished = await _all_of(reply)
    return wav_bytes(samples, reply.started.sample_rate), finished, samples.size / reply.started.sample_rate


async def whole_file(reply: OpenedReply, audio_format: str, *, output_rate: int | None = None) -> tuple[bytes, str, int]:
    """The reply's audio as one complete file (a WAV with its real sizes, not a stream's unknown
    ones), its media type and its sample rate; the encoding runs on a worker thread."""
    samples, _ = await _all_of(reply)
    return await asyncio.to_thread(_encode_whole, samples, reply.started.sample_rate, audio_format, output_rate)


def _encode_whole(samples: np.ndarray, rate: int, audio_format: str, output_rate: int | None) -> tuple[bytes, str, int]:
    if audio_format == "wav" and output_rate in (None, rate):
        return wav_bytes(samples, rate), "audio/wav", rate
    encoder = StreamEncoder(audio_format, rate, output_rate=output_rate)
    try:
        return encoder.encode(samples) + encoder.finish(), encoder.media_type, encoder.output_rate
    finally:
        encoder.close()


def text_headers(finished: ReplyFinished) -> dict[str, str]:
    """The reply's text as percent-encoded headers, each cut to `MAX_TEXT_HEADER_BYTES`; when cut,
    `X-Text-Truncated` says so (the events format carries any length)."""
    reply, reply_cut = _percent_encoded_prefix(finished.text, MAX_TEXT_HEADER_BYTES)
    spoken, spoken_cut = _percent_encoded_prefix(finished.spoken_text, MAX_TEXT_HEADER_BYTES)
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


def _since(arrived: float) -> float:
    return time.perf_counter() - arrived
