"""The reply pipeline: LLM text pieces → sentences → audio, with the stages overlapping.

A writer task drives the LLM and the splitter and puts sentences on a bounded queue; the caller
iterates this module's async generator, which synthesizes each sentence as soon as it is queued.
While sentence n is being synthesized the LLM keeps writing sentence n+1. Closing the generator
(client gone) cancels the writer, which closes the LLM stream, which stops generation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from chat2audio.runtime.text import is_cjk, is_speakable
from chat2audio.splitter import SentenceSplitter, SplitterConfig, ends_sentence, speakable_text
from llm.base import ChatMessage, GenerationOptions, LLMBackend
from tts.base import TTSEngine, VoiceParams


@dataclass(frozen=True)
class AudioChunk:
    """A piece of one sentence's audio. Each sentence ends with an empty chunk whose
    `sentence_done` is set, so consumers know when a sentence is complete without waiting.
    `sentence` is the text as written; `speech` what was said (a translation, or the same)."""

    sentence_index: int
    sentence: str
    audio: np.ndarray
    sentence_done: bool
    speech: str = ""


@dataclass
class ReplyTimings:
    """Seconds since the pipeline started."""

    first_text: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    llm_done: float | None = None


@dataclass
class Reply:
    """Filled in while the pipeline runs; complete once the generator is exhausted."""

    raw_text: str = ""
    spoken: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    timings: ReplyTimings = field(default_factory=ReplyTimings)

    @property
    def spoken_text(self) -> str:
        return join_sentences(self.spoken)

    @property
    def text(self) -> str:
        """The reply as shown: what the LLM wrote, or, when it ran out of tokens mid-sentence,
        only its complete sentences (what was spoken)."""
        return self.spoken_text if self.finish_reason == "length" else self.raw_text.strip()


def join_sentences(sentences: list[str]) -> str:
    """Join with a space between Latin sentences and nothing between CJK ones."""
    text = ""
    for sentence in sentences:
        if text and not (is_cjk(text[-1]) or is_cjk(sentence[0])):
            text += " "
        text += sentence
    return text


_END = object()
_NO_AUDIO = np.zeros(0, dtype=np.float32)


class ReplyTimeout(Exception):
    """The reply did not finish within the request timeout."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


Translator = Callable[[str], Awaitable[str]]


async def speak_reply(
    llm: LLMBackend,
    tts: TTSEngine | None,
    voice: VoiceParams | None,
    messages: list[ChatMessage],
    options: GenerationOptions,
    reply: Reply,
    *,
    splitter_config: SplitterConfig | None = None,
    queue_size: int = 4,
    stream_first_sentence: bool = True,
    overlap: bool = True,
    timeout_s: float | None = None,
    translate: Translator | None = None,
) -> AsyncIterator[AudioChunk]:
    """Yield the reply's audio, sentence by sentence, chunk by chunk; fill `reply` as it goes.

    Without `tts` (text-only replies) each sentence comes as one empty, finished chunk. With
    `translate`, each sentence is translated before synthesis, in a stage of its own, so the
    translation of sentence n+1 overlaps the synthesis of sentence n. `overlap=False` is the
    original system's design, kept for benchmarks: the whole reply is written before the first
    sentence is synthesized. Past `timeout_s` the reply fails with ReplyTimeout.
    """
    started = time.perf_counter()
    within_deadline = _Deadline(timeout_s)

    def elapsed() -> float:
        return time.perf_counter() - started

    written: asyncio.Queue = asyncio.Queue(maxsize=queue_size if overlap else 0)

    async def write() -> None:
        splitter = SentenceSplitter(splitter_config)
        try:
            async with aclosing(llm.stream_chat(messages, options)) as pieces:
                while True:
                    async with within_deadline():
                        piece = await anext(pieces, None)
                    if piece is None:
                        break
                    if piece.text and reply.timings.first_text is None:
                        reply.timings.first_text = elapsed()
                    reply.raw_text += piece.text
                    if piece.finish_reason:
                        reply.finish_reason = piece.finish_reason
                    for sentence in splitter.feed(piece.text):
                        await written.put(sentence)
            reply.timings.llm_done = elapsed()
            for sentence in splitter.finish(drop_incomplete=reply.finish_reason == "length"):
                await written.put(sentence)
            await written.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the reader, which raises it in the request
            # Sentences the LLM finished before it failed are still spoken, then the error is told.
            for sentence in splitter.finish(drop_incomplete=True):
                if ends_sentence(sentence):
                    await written.put(sentence)
            await written.put(_Failed(error))

    stages = [asyncio.create_task(write(), name="reply-writer")]
    to_speak = written
    if translate is not None:
        to_speak = asyncio.Queue(maxsize=queue_size if overlap else 0)
        stages.append(asyncio.create_task(_translate_stage(written, to_speak, translate, within_deadline)))
    try:
        if not overlap:
            await asyncio.shield(stages[0])
        index = 0
        while True:
            async with within_deadline():
                item = await to_speak.get()
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.error
            text, speech = item if isinstance(item, tuple) else (item, item)
            if not is_speakable(speech):
                continue
            if reply.timings.first_sentence is None:
                reply.timings.first_sentence = elapsed()
            if tts is not None:
                streaming = stream_first_sentence and index == 0
                async with aclosing(tts.synthesize(speech, voice, streaming=streaming)) as chunks:
                    while True:
                        async with within_deadline():
                            audio = await anext(chunks, None)
                        if audio is None:
                            break
                        if reply.timings.first_audio is None:
                            reply.timings.first_audio = elapsed()
                        yield AudioChunk(index, text, audio, sentence_done=False, speech=speech)
            reply.spoken.append(text)
            yield AudioChunk(index, text, _NO_AUDIO, sentence_done=True, speech=speech)
            index += 1
    finally:
        await _stop_stages(stages, [written, to_speak])


class _Deadline:
    """`async with deadline():` bounds one await by the reply's overall deadline.

    Built on `asyncio.timeout`, which (unlike `asyncio.wait_for` on Python 3.11) never swallows a
    cancellation that lands just as the awaited item arrives: a cancelled stage really stops.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._at = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout_at(self._at):
                yield
        except TimeoutError:
            raise ReplyTimeout(f"reply took longer than {self.timeout_s:g} s") from None


async def _stop_stages(stages: list[asyncio.Task], queues: list[asyncio.Queue]) -> None:
    """Cancel the stages and wait until they have ended.

    A stage blocked on a full queue whose reader has gone must not outlive the reply, so the
    queues are drained while waiting (a stage ignores no cancellation, but this costs nothing).
    """
    for stage in stages:
        stage.cancel()
    while pending := [stage for stage in stages if not stage.done()]:
        for queue in queues:
            while not queue.empty():
                queue.get_nowait()
        await asyncio.wait(pending, timeout=0.1)
    for stage in stages:
        if not stage.cancelled():
            stage.exception()  # retrieved: a stage's failure was already handed to the reader


async def _translate_stage(source: asyncio.Queue, target: asyncio.Queue, translate: Translator, within_deadline: _Deadline) -> None:
    """Sentences in, (sentence, its translation) out; failures and the end are passed on."""
    while True:
        item = await source.get()
        if item is _END or isinstance(item, _Failed):
            await target.put(item)
            return
        if not is_speakable(item):
            continue
        try:
            async with within_deadline():
                translation = (await translate(item)).strip()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await target.put(_Failed(error))
            return
        # Translations skip the splitter: the same filter decides what of them is spoken.
        await target.put((item, speakable_text(translation) or item))
