"""The one interface every TTS engine implements: a sentence and a voice in, audio out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

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


class TTSError(EngineError):
    """Synthesis failed; `status` is the HTTP status to report if audio has not started yet."""

    kind = "TTS"
    default_status = 500


@runtime_checkable
class TTSEngine(Protocol):
    """Turns one sentence into float32 mono audio in [-1, 1], chunk by chunk.

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
    ) -> AsyncIterator[np.ndarray]:
        """Audio for `text`. With `streaming`, yield the first chunk as early as possible."""
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
