"""The one interface every TTS engine implements: a sentence and a voice in, audio out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Union, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

from chat2audio.runtime.errors import EngineError


class VoiceParams(BaseModel):
    """Base class of an engine's `[voice]` table in a speaker file (engine-specific fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def model_files(self) -> list[str]:
        """Paths, relative to the models dir, that must exist for this voice to work."""
        return []

    def download_command(self, speaker_id: str) -> str | None:
        """The command that fetches this voice's missing files, if a script can."""
        return None

    def at_speed(self, factor: float) -> VoiceParams:
        """This voice speaking `factor` times as fast (within what the engine allows); itself
        where the engine has no speed control."""
        return self

    def with_style(self, overrides: dict[str, Any]) -> VoiceParams:
        """This voice in one of its speaker's styles (moods): the style's `[styles.<name>]` table
        over the `[voice]` table, validated like it. Engines whose styles must keep something of
        the base voice (GPT-SoVITS: its timbre) override this."""
        return type(self).model_validate({**self.model_dump(exclude_unset=True), **overrides})


@dataclass(frozen=True)
class WordTiming:
    """When one word of a sentence is heard (one character, for Chinese), in seconds from the
    sentence's first sample."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WordTimings:
    """Yielded by `TTSEngine.synthesize` among a sentence's audio chunks by engines that know when
    each word is heard; several may come per sentence (streamed: as their audio is made), in
    order. Engines that do not know yield none: no made-up numbers."""

    words: tuple[WordTiming, ...]


SpeechItem = Union[np.ndarray, WordTimings]


async def audio_of(items: AsyncGenerator[SpeechItem, None]) -> AsyncIterator[np.ndarray]:
    """The audio chunks of a `synthesize` stream, its `WordTimings` left out, for callers that
    only measure or play the audio. Closing this closes the engine's stream."""
    async with aclosing(items):
        async for item in items:
            if isinstance(item, np.ndarray):
                yield item


class TTSError(EngineError):
    """Synthesis failed; `status` is the HTTP status to report if audio has not started yet."""

    kind = "TTS"
    default_status = 500


@runtime_checkable
class TTSEngine(Protocol):
    """Turns one sentence into float32 mono audio in [-1, 1], chunk by chunk, with the words'
    timings (`WordTimings` items) where the engine knows them.

    An engine owns its models and its own concurrency (engines that are not thread-safe
    serialize internally). Closing the iterator early must stop the work promptly.
    An engine that caches voices may also implement `HoldsVoices`; callers use `hold_voice`.
    """

    name: ClassVar[str]
    voice_model: ClassVar[type[VoiceParams]]

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def sample_rate(self, voice: VoiceParams) -> int: ...

    def check_voice(self, voice: VoiceParams, models_dir: Path) -> list[str]:
        """Problems that make this voice unusable (e.g. missing files), empty if none."""
        ...

    def synthesize(
        self, text: str, voice: VoiceParams, *, streaming: bool = False
    ) -> AsyncIterator[SpeechItem]:
        """Audio for `text` (non-empty float32 arrays), and `WordTimings` where known. With
        `streaming`, yield the first chunk as early as possible."""
        ...


@runtime_checkable
class HoldsVoices(Protocol):
    """Optional engine hook, kept out of `TTSEngine` so engines without a voice cache need nothing."""

    def reply_voice(self, voice: VoiceParams) -> AbstractAsyncContextManager[None]:
        """Keep `voice` loaded while the context is open (one reply), whatever other voices speak."""
        ...


def hold_voice(engine: TTSEngine | None, voice: VoiceParams | None) -> AbstractAsyncContextManager[None]:
    """`async with hold_voice(engine, voice):` around one reply. A no-op for engines without the
    hook and for text-only replies (no engine or no voice)."""
    if voice is None or not isinstance(engine, HoldsVoices):
        return contextlib.nullcontext()
    return engine.reply_voice(voice)
