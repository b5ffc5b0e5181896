"""A reply's events as bytes on the wire: a streamed WAV or compressed audio, server-sent events,
or one complete file.

Each encoder gets the reply already opened (its ReplyStarted and first item, so that a
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
from fastapi.responses import StreamingResponse
from sse_starlette import ServerSentEvent
from starlette.types import Receive, Scope, Send

from chat2audio.audio import MOUTH_FRAME_S, mouth_envelope, wav_bytes
from chat2audio.codecs import MEDIA_TYPES, StreamEncoder
from chat2audio.http.errors import error_detail
from chat2audio.pipeline import AudioChunk, ReplyFinished, ReplyItem, SentenceDone
from chat2audio.protocol.chat import DoneEvent, ErrorDetail, ErrorEvent, SentenceEvent, StartEvent, WordTimingInfo
from chat2audio.service import ReplyEvent, ReplyStarted

log = logging.getLogger(__name__)

# What an audio endpoint may answer: any encoder's format, or server-sent events.
AUDIO_AND_EVENT_MEDIA_TYPES = sorted({*MEDIA_TYPES.values(), "text/event-stream"})

# Proxies commonly refuse responses whose headers exceed 4-8 KB (nginx: 502); percent-encoded
# Chinese takes 9 bytes a character, so a long reply would not fit.
MAX_TEXT_HEADER_BYTES = 1536
MAX_TIMINGS_HEADER_BYTES = 3072  # X-Word-Timings: ~100 words (see above); the events format carries any number


@dataclass
class OpenedReply:
    """A reply whose first item (audio, a text-only sentence, or its end) has arrived, and the
    rest of its stream."""

    started: ReplyStarted
    head: list[ReplyItem]
    rest: AsyncIterator[ReplyEvent]
    request_id: str
    arrived: float  # perf_counter() when the request arrived

    async def items(self) -> AsyncIterator[ReplyItem]:
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


async def open_reply(events: AsyncIterator[ReplyEvent], request_id: str, arrived: float) -> OpenedReply:
    """Run the reply until its first item after ReplyStarted: its first audio, its first sentence
    (text only) or its end."""
    started = await anext(events)
    assert isinstance(started, ReplyStarted), "a reply starts with ReplyStarted"
    head = [item] if (item := await anext(events, None)) is not None else []
    return OpenedReply(started, head, events, request_id, arrived)  # type: ignore[arg-type]


async def encoded_audio(reply: OpenedReply, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """The reply's audio through `encoder` (mp3, opus, …), each piece as soon as the codec gives
    it; a failure on the way is raised, for a stream that can report it (events)."""
    try:
        async with aclosing(reply.rest):
            async for item in reply.items():
                if isinstance(item, AudioChunk) and (data := encoder.encode(item.audio)):
                    yield data
            if data := encoder.finish():
                yield data
    finally:
        encoder.close()


async def encoded_stream(reply: OpenedReply, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """`encoded_audio` as a plain audio stream (a WAV's header says "unknown length"): once
    audio has started an error cannot be carried, so it ends the stream early and is logged."""
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
        total_samples = 0
        try:
            async for item in reply.items():
                if isinstance(item, ReplyFinished):
                    yield event(DoneEvent(
                        text=item.text, spoken_text=item.spoken_text, finish_reason=item.finish_reason,
                        audio_seconds=total_samples / rate if rate else 0.0, elapsed_seconds=_since(reply.arrived),
                    ))
                elif isinstance(item, SentenceDone):
                    total_samples += item.audio.size
                    yield event(sentence_event(item, rate, _since(reply.arrived)))
        except Exception as error:
            failure = error_detail(error, reply.request_id)
            yield event(ErrorEvent(error=ErrorDetail(type=failure.type, message=failure.message)))


def sentence_event(sentence: SentenceDone, rate: int, elapsed_s: float) -> SentenceEvent:
    """The `sentence` event of the events format: its text, style, audio, timings and mouth."""
    speaks = bool(rate and sentence.audio.size)
    return SentenceEvent(
        index=sentence.index, text=sentence.text, speech_text=sentence.speech if sentence.speech != sentence.text else None,
        style=sentence.style, audio_wav_base64=base64.b64encode(wav_bytes(sentence.audio, rate)).decode() if rate else None,
        audio_seconds=sentence.audio.size / rate if rate else 0.0, offset_s=round(sentence.offset_s, 3),
        words=word_infos(sentence), mouth=mouth_envelope(sentence.audio, rate) if speaks else None,
        mouth_frame_s=MOUTH_FRAME_S, elapsed_seconds=elapsed_s,
    )


def word_infos(sentence: SentenceDone, *, from_reply_start: bool = False) -> list[WordTimingInfo] | None:
    """The sentence's word timings on the wire, from its own start (or from the reply's)."""
    if sentence.words is None:
        return None
    shift = sentence.offset_s if from_reply_start else 0.0
    return [
        WordTimingInfo(text=word.text, start_s=round(word.start_s + shift, 3), end_s=round(word.end_s + shift, 3))
        for word in sentence.words
    ]


@dataclass(frozen=True)
class WholeFile:
    """A reply's audio as one complete file, what was said, and when each word is heard in it
    (None where the engine does not say)."""

    data: bytes
    media_type: str
    sample_rate: int
    seconds: float
    finished: ReplyFinished
    words: list[WordTimingInfo] | None = None


async def whole_file(reply: OpenedReply, audio_format: str | None, *, output_rate: int | None = None) -> WholeFile:
    """The reply's audio as one complete file (a WAV with its real sizes, not a stream's unknown
    ones), or with `audio_format` None its text alone (no data); a failure on the way is raised
    (nothing was sent). The encoding runs on a worker thread."""
    sentences: list[np.ndarray] = []
    words: list[WordTimingInfo] | None = None
    finished: ReplyFinished | None = None
    async with aclosing(reply.rest):
        async for item in reply.items():
            if isinstance(item, SentenceDone):
                sentences.append(item.audio)
                if (timed := word_infos(item, from_reply_start=True)) is not None:
                    words = (words or []) + timed
            elif isinstance(item, ReplyFinished):
                finished = item
    assert finished is not None
    samples = np.concatenate(sentences) if sentences else np.zeros(0, dtype=np.float32)
    rate = reply.started.sample_rate
    seconds = samples.size / rate if rate else 0.0
    if audio_format is None:
        return WholeFile(b"", "", rate, seconds, finished, words)
    data, media_type, output_rate = await asyncio.to_thread(_encode_whole, samples, rate, audio_format, output_rate)
    return WholeFile(data, media_type, output_rate, seconds, finished, words)


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


def timing_headers(words: list[WordTimingInfo] | None) -> dict[str, str]:
    """`X-Word-Timings`: the words of a whole file, from its start, as percent-encoded JSON
    (`[{"text", "start_s", "end_s"}, …]`), as many as fit `MAX_TIMINGS_HEADER_BYTES`; when cut,
    `X-Word-Timings-Truncated` says so. None where the engine does not say."""
    if words is None:
        return {}
    kept: list[str] = []
    size = len("%5B%5D")
    for word in words:
        piece = quote(json.dumps(word.model_dump(), ensure_ascii=False, separators=(",", ":")), safe="")
        size += len(piece) + (len("%2C") if kept else 0)
        if size > MAX_TIMINGS_HEADER_BYTES:
            break
        kept.append(piece)
    headers = {"X-Word-Timings": "%5B" + "%2C".join(kept) + "%5D"}
    if len(kept) < len(words):
        headers["X-Word-Timings-Truncated"] = "true; use format=events for every word"
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
