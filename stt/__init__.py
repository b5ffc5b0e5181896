"""Speech-to-text backends, selected by `CHAT2AUDIO_STT_BACKEND`; one module each, imported on demand."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stt.base import STTBackend, STTError, audio_duration, decode_audio

if TYPE_CHECKING:
    from chat2audio.settings import Settings

BACKENDS: dict[str, str] = {
    "transformers": "stt.transformers_backend",
    "openai": "stt.openai_backend",
}


def create_backend(settings: Settings) -> STTBackend | None:
    """Build (not start) the configured backend, or None when voice input is off (`none`).

    Each module exposes `create(settings)`.
    """
    if settings.stt_backend == "none":
        return None
    return importlib.import_module(BACKENDS[settings.stt_backend]).create(settings)


__all__ = ["BACKENDS", "STTBackend", "STTError", "audio_duration", "create_backend", "decode_audio"]
