"""The reply pipeline: LLM text pieces → sentences → audio, with the stages overlapping.

A writer task drives the LLM and the splitter and puts sentences on a bounded queue; the caller
iterates this module's async generator, which synthesizes each sentence as soon as it is queued.
While sentence n is being synthesized the LLM keeps writing sentence n+1. Closing the generator
(client gone) cancels the writer, which closes the LLM stream, which stops generation.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Union

import numpy as np

from chat2audio.runtime.errors import ReportableError
from chat2audio.runtime.scheduling import speaking_by
from chat2audio.runtime.text import is_cjk, is_speakable
from chat2audio.splitter import SentenceSplitter, SplitterConfig, ends_sentence, speakable_text
from llm.base import ChatMessage, GenerationOptions, ReplyWriter
from tts.base import TTSEngine, VoiceParams, WordTiming, WordTimings


@dataclass(frozen=True)
class AudioChunk:
    """A piece of one sentence's audio, as soon as it is synthesized (never empty)."""

    sentence_index: int
    audio: np.ndarray


@dataclass(frozen=True)
class SentenceDone:
    """A sentence, after its last chunk: everything a consumer needs of it in one item, so that
    none re-collects chunks. `text` is as written; `speech` what was said (a translation, or
    the same); `audio` all of its samples (empty for text-only replies); `separator` what goes
    before it when the reply is joined (see `join_sentences`), so that a transcript grows by
    `separator + text`. `style` is the mood it was spoken in (None: the voice's own);
    `offset_s` where its audio starts in the reply's; `words` when each word is heard, from
    its first sample (None where the engine does not say)."""

    index: int
    text: str
    speech: str
    audio: np.ndarray
    separator: str
    style: str | None = None
    offset_s: float = 0.0
    words: tuple[WordTiming, ...] | None = None


@dataclass(frozen=True)
class ReplyFinished:
    """The last item of a reply: what was written (its style tags taken out) and what was spoken."""

    raw_text: str
    spoken: tuple[str, ...]
    finish_reason: str
    llm_done_s: float  # seconds from the start until the LLM had written everything

    @property
    def spoken_text(self) -> str:
        return join_sentences(self.spoken)

    @property
    def text(self) -> str:
        """The reply as shown: what the LLM wrote, or, when it ran out of tokens mid-sentence,
        only its complete sentences (what was spoken)."""
        return self.spoken_text if self.finish_reason == "length" else self.raw_text.strip()


ReplyItem = Union[AudioChunk, SentenceDone, ReplyFinished]


def join_sentences(sentences: list[str] | tuple[str, ...]) -> str:
    """Join with a space between Latin sentences and nothing between CJK ones."""
    text = ""
    for sentence in sentences:
        text += separator_between(text, sentence) + sentence
    return text


def separator_between(text: str, sentence: str) -> str:
    """What goes between `text` and the next `sentence`: a space between Latin ones, nothing
    between CJK ones or at the start."""
    return " " if text and not (is_cjk(text[-1]) or is_cjk(sentence[0])) else ""


class ReplyTimeout(ReportableError):
    """The reply did not finish within the request timeout."""


# The splitter takes a long piece (a whole text to speak) this many characters at a time, so
# that the event loop serves other requests in between; its sentences do not depend on the cuts.
FEED_CHARS = 256

_END = object()
_NO_AUDIO = np.zeros(0, dtype=np.float32)


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


@dataclass
class _Written:
    """What the writer stage has seen of the LLM's output so far."""

    raw_text: str = ""
    finish_reason: str = "stop"
    llm_done_s: float = 0.0


Translator = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class Staging:
    """How one reply's stages run, decided once per reply.

    `queue_size` sentences may wait written but not yet spoken; past `timeout_s` the reply fails
    with ReplyTimeout. With `stream_sentences` (the stream app) every sentence is synthesized in
    chunks that leave as they are made: a sentence synthesized whole reaches the listener only
    once all of it is done, and on a voice that is not many times faster than speech (a real
    GPT-SoVITS voice on a CPU), a long sentence after a short one would leave the listener with
    nothing to play meanwhile. With `by_deadline`, each sentence is due when the listener would
    run out of audio (see `chat2audio.runtime.scheduling`), and the sentence being written is cut
    short when the listener is about to; without, every sentence is due when it is submitted."""

    splitter: SplitterConfig | None = None
    queue_size: int = 4
    timeout_s: float | None = None
    stream_sentences: bool = True
    by_deadline: bool = True


async def speak_reply(
    llm: ReplyWriter,
    tts: TTSEngine | None,
    voice: VoiceParams | None,
    messages: list[ChatMessage],
    options: GenerationOptions,
    staging: Staging = Staging(),
    *,
    translate: Translator | None = None,
    styles: Mapping[str, VoiceParams] | None = None,
    style: str | None = None,
) -> AsyncIterator[ReplyItem]:
    """Yield the reply's audio chunk by chunk, a SentenceDone after each sentence's last chunk,
    then one ReplyFinished.

    `styles` are the voice's moods: a tag naming one ("[happy]") in the reply switches the voice
    to it from there on (`style`: the one before any tag; None: `voice` itself).

    Without `tts` (text-only replies) each sentence comes as a SentenceDone without audio. With
    `translate`, each sentence is translated before synthesis, in a stage of its own, so the
    translation of sentence n+1 overlaps the synthesis of sentence n. How the stages run is
    `staging`'s (see there); the benchmarks' baselines wrap this function (chat2audio/baselines.py).
    """
    deadline = _Deadline(staging.timeout_s)
    written_so_far = _Written()
    written: asyncio.Queue = asyncio.Queue(maxsize=staging.queue_size)
    playback = _Playback(tts.sample_rate(voice) if tts is not None and voice is not None else 0)
    running_dry = playback.running_dry if staging.by_deadline and tts is not None else None
    styles = styles or {}
    splitter = SentenceSplitter(staging.splitter, styles=frozenset(styles), style=style)
    writer = _write_sentences(llm, messages, options, splitter, written, written_so_far, deadline, running_dry)
    stages = [asyncio.create_task(writer, name="reply-writer")]
    to_speak = written
    if translate is not None:
        to_speak = asyncio.Queue(maxsize=staging.queue_size)
        stages.append(asyncio.create_task(_translate_stage(written, to_speak, translate, deadline)))
    spoken: list[str] = []
    samples_before = 0
    try:
        index = 0
        while (sentence := await _next_sentence(to_speak, deadline)) is not None:
            text, speech = sentence
            if not is_speakable(speech):
                continue
            sentence_style = getattr(text, "style", None)
            audio: list[np.ndarray] = []
            words: list[WordTiming] | None = None
            if tts is not None:
                due = playback.runs_dry_at() if staging.by_deadline else time.monotonic()
                sentence_voice = styles.get(sentence_style, voice) if sentence_style else voice
                chunks = _synthesize(tts, speech, sentence_voice, staging.stream_sentences, due, deadline)
                async with aclosing(chunks):
                    async for chunk in chunks:
                        if isinstance(chunk, WordTimings):
                            words = (words or []) + list(chunk.words)
                        elif chunk.size:
                            playback.add(chunk)
                            audio.append(chunk)
                            yield AudioChunk(index, chunk)
            separator = separator_between(spoken[-1] if spoken else "", text)
            spoken.append(text)
            sentence_audio = np.concatenate(audio) if audio else _NO_AUDIO
            offset_s = samples_before / playback.sample_rate if playback.sample_rate else 0.0
            yield SentenceDone(
                index, str(text), speech, sentence_audio, separator, sentence_style, offset_s,
                tuple(words) if words is not None else None,
            )
            samples_before += sentence_audio.size
            index += 1
    finally:
        await _stop_stages(stages, [written, to_speak])
    shown = without_style_tags(written_so_far.raw_text, styles)
    yield ReplyFinished(shown, tuple(spoken), written_so_far.finish_reason, written_so_far.llm_done_s)


def without_style_tags(text: str, styles: Mapping[str, object]) -> str:
    """`text` without the tags of `styles` ("[happy] "): they are cues, not words."""
    if not styles:
        return text
    names = "|".join(re.escape(name) for name in styles)
    return re.sub(rf"\[\s*(?:{names})\s*\]\s*", "", text, flags=re.IGNORECASE)


async def _write_sentences(
    llm: ReplyWriter,
    messages: list[ChatMessage],
    options: GenerationOptions,
    splitter: SentenceSplitter,
    written: asyncio.Queue,
    seen: _Written,
    deadline: _Deadline,
    running_dry: Callable[[], bool | None] | None = None,
) -> None:
    """The writer stage: LLM pieces through the splitter onto `written`, then the end marker.
    A failure is put on the queue for the reader, which raises it in the request.

    When nothing written waits to be spoken and the listener is about to run out of audio
    (`running_dry()` is not None), the sentence being written is cut at its last comma (at its
    last word once the listener has run out: `running_dry()` is True): a shorter piece now beats
    silence until the sentence ends. With many replies sharing the LLM, each writes slower."""
    started = time.perf_counter()
    try:
        async with aclosing(llm.stream_chat(messages, options)) as pieces:
            while (piece := await _next_within(pieces, deadline)) is not None:
                seen.raw_text += piece.text
                if piece.finish_reason:
                    seen.finish_reason = piece.finish_reason
                for start in range(0, len(piece.text), FEED_CHARS):
                    for sentence in splitter.feed(piece.text[start : start + FEED_CHARS]):
                        await written.put(sentence)
                    await asyncio.sleep(0)  # a long piece (a text to speak) leaves the loop to others between slices
                if running_dry is not None and written.empty() and (dry := running_dry()) is not None:
                    for sentence in splitter.cut_early(at_words=dry):
                        await written.put(sentence)
        seen.llm_done_s = time.perf_counter() - started
        for sentence in splitter.finish(drop_incomplete=seen.finish_reason == "length"):
            await written.put(sentence)
        await written.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        # Sentences the LLM finished before it failed are still spoken, then the error is told.
        for sentence in splitter.finish(drop_incomplete=True):
            if ends_sentence(sentence):
                await written.put(sentence)
        await written.put(_Failed(error))


# A listener with less audio than this left gets the sentence being written cut at a comma.
LOW_WATER_S = 0.4


class _Playback:
    """When this reply's listener runs out of audio, if it plays from the first chunk in real time."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.started: float | None = None
        self.seconds = 0.0

    def add(self, audio: np.ndarray) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.seconds += audio.size / self.sample_rate if self.sample_rate else 0.0

    def running_dry(self) -> bool | None:
        """None while the listener has more than `LOW_WATER_S` of audio left (or has not started),
        False when it is about to run out, True once it has."""
        if self.started is None:
            return None
        left = self.runs_dry_at() - time.monotonic()
        return None if left > LOW_WATER_S else left <= 0

    def runs_dry_at(self) -> float:
        """The deadline of the next sentence: now before any audio was sent (no slack at all)."""
        return time.monotonic() if self.started is None else self.started + self.seconds


async def _synthesize(
    tts: TTSEngine, text: str, voice: VoiceParams | None, streaming: bool, due: float, deadline: _Deadline
) -> AsyncIterator[np.ndarray | WordTimings]:
    """One sentence's audio; its synthesis is scheduled by `due` on engines that schedule by
    deadline (the job is submitted at the first step, inside `speaking_by`)."""
    chunks = tts.synthesize(text, voice, streaming=streaming)
    async with aclosing(chunks):
        with speaking_by(due):
            audio = await _next_within(chunks, deadline)
        while audio is not None:
            yield audio
            audio = await _next_within(chunks, deadline)


async def _next_sentence(queue: asyncio.Queue, deadline: _Deadline) -> tuple[str, str] | None:
    """(as written, as spoken) of the next sentence; None at the end; raises what a stage failed with."""
    async with deadline():
        item = await queue.get()
    if item is _END:
        return None
    if isinstance(item, _Failed):
        raise item.error
    return item if isinstance(item, tuple) else (item, item)


async def _next_within(items: AsyncIterator, deadline: _Deadline):
    async with deadline():
        return await anext(items, None)


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


async def _translate_stage(source: asyncio.Queue, target: asyncio.Queue, translate: Translator, deadline: _Deadline) -> None:
    """Sentences in, (sentence, its translation) out; failures and the end are passed on."""
    while True:
        item = await source.get()
        if item is _END or isinstance(item, _Failed):
            await target.put(item)
            return
        if not is_speakable(item):
            continue
        try:
            async with deadline():
                translation = (await translate(item)).strip()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await target.put(_Failed(error))
            return
        # Translations skip the splitter: the same filter decides what of them is spoken.
        await target.put((item, speakable_text(translation) or item))
