"""The one interface every TTS engine implements: a sentence and a voice in, audio out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict


class VoiceParams(BaseModel):
    """Base class of an engine's `[voice]` table in a speaker file (engine-specific fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def model_files(self) -> list[str]:
        """Paths, relative to the models dir, that must exist for this voice to work."""
        return []


class TTSError(Exception):
    """Synthesis failed; `status` is the HTTP status to report if audio has not started yet."""

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class TTSEngine(Protocol):
    """Turns one sentence into float32 mono audio in [-1, 1], chunk by chunk.

    An engine owns its models and its own concurrency (engines that are not thread-safe
    serialize internally). Closing the iterator early must stop the work promptly.
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
