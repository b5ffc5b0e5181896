"""In-process measurements on the backends a server runs: the physical floor, the pipeline
without HTTP, engine speeds (clients over HTTP are in `bench.concurrency`)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from chat2audio.pipeline import speak_reply
from chat2audio.runtime.text import is_speakable
from chat2audio.splitter import SentenceSplitter, SplitterConfig
from llm.base import ChatMessage, GenerationOptions, LLMBackend
from tts.base import TTSEngine, VoiceParams, audio_of


@dataclass
class Floor:
    first_sentence: str
    first_sentence_written_s: float  # the LLM has written the last character of the first sentence
    first_chunk_s: float  # the TTS has produced that sentence's first chunk
    llm_total_s: float
    tts_total_s: float  # every sentence synthesized, one after another
    tokens: int
    sentences: list[str]

    @property
    def floor_s(self) -> float:
        return self.first_sentence_written_s + self.first_chunk_s


async def measure_floor(
    llm: LLMBackend, tts: TTSEngine, voice: VoiceParams, messages: list[ChatMessage], options: GenerationOptions,
    splitter_config: SplitterConfig | None = None,
) -> Floor:
    """The physical floor for one reply: when the LLM alone has written the first sentence, plus
    how long the TTS alone takes to produce that sentence's first chunk. Stages measured apart."""
    stamps: list[tuple[float, str]] = []
    started = time.perf_counter()
    async with aclosing(llm.stream_chat(messages, options)) as pieces:
        async for piece in pieces:
            stamps.append((time.perf_counter() - started, piece.text))
    llm_total = time.perf_counter() - started
    texts = [text for _, text in stamps]
    sentences = [s for s in _split(texts, splitter_config) if is_speakable(s)]
    first = sentences[0] if sentences else ""
    # The earliest piece after which the first sentence is already complete as written.
    written_at = llm_total
    for k in range(1, len(texts) + 1):
        prefix = [s for s in _split(texts[:k], splitter_config) if is_speakable(s)]
        if prefix and prefix[0] == first:
            written_at = stamps[k - 1][0]
            break
    first_chunk = await _time_to_first_chunk(tts, first, voice) if first else 0.0
    tts_started = time.perf_counter()
    for sentence in sentences:
        async with aclosing(audio_of(tts.synthesize(sentence, voice))) as chunks:
            async for _ in chunks:
                pass
    return Floor(first, written_at, first_chunk, llm_total, time.perf_counter() - tts_started, len(texts), sentences)


def _split(pieces: list[str], config: SplitterConfig | None) -> list[str]:
    splitter = SentenceSplitter(config)
    return [s for piece in pieces for s in splitter.feed(piece)] + splitter.finish()


async def _time_to_first_chunk(tts: TTSEngine, text: str, voice: VoiceParams) -> float:
    started = time.perf_counter()
    async with aclosing(audio_of(tts.synthesize(text, voice, streaming=True))) as chunks:
        async for _ in chunks:
            return time.perf_counter() - started
    return time.perf_counter() - started


async def pipeline_in_process(
    llm: LLMBackend, tts: TTSEngine, voice: VoiceParams, messages: list[ChatMessage], options: GenerationOptions,
    styles: Mapping[str, VoiceParams] | None = None,
) -> float:
    """The same pipeline the server runs, without HTTP: seconds to the last audio chunk."""
    started = time.perf_counter()
    async with aclosing(speak_reply(llm, tts, voice, messages, options, styles=styles)) as chunks:
        async for _ in chunks:
            pass
    return time.perf_counter() - started


@dataclass
class EngineSpeed:
    first_chunk_s: float
    synth_s: float
    audio_s: float

    @property
    def rtf(self) -> float:
        return self.synth_s / self.audio_s if self.audio_s else float("nan")


async def tts_speed(tts: TTSEngine, text: str, voice: VoiceParams) -> EngineSpeed:
    first = await _time_to_first_chunk(tts, text, voice)
    started = time.perf_counter()
    samples = 0
    async with aclosing(audio_of(tts.synthesize(text, voice))) as chunks:
        async for chunk in chunks:
            samples += chunk.size
    return EngineSpeed(first, time.perf_counter() - started, samples / tts.sample_rate(voice))


@dataclass
class LLMSpeed:
    ttft_s: float
    tokens: int
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        generating = self.total_s - self.ttft_s
        return (self.tokens - 1) / generating if self.tokens > 1 and generating > 0 else float("nan")


async def llm_speed(llm: LLMBackend, messages: list[ChatMessage], options: GenerationOptions, count_tokens) -> LLMSpeed:
    started = time.perf_counter()
    first: float | None = None
    text = ""
    async with aclosing(llm.stream_chat(messages, options)) as pieces:
        async for piece in pieces:
            if piece.text and first is None:
                first = time.perf_counter() - started
            text += piece.text
    total = time.perf_counter() - started
    return LLMSpeed(first or total, count_tokens(text), total)


class PeakRSS:
    """Samples a process's resident memory in a thread; `.peak_mb` after `stop()`."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self._interval = interval_s
        self.peak_mb = self.current_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self.current_mb())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
