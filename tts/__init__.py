"""TTS engines, selected by the `engine` field of a speaker file.

Each engine lives in its own module; heavy imports (torch, gsv_tts, ctypes libraries) happen only
when its factory runs, so an engine whose package is missing does not break the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from chat2audio.settings import Settings
from tts.base import TTSEngine, TTSError, VoiceParams


@dataclass(frozen=True)
class EngineEntry:
    module: str  # module holding `VOICE_MODEL` (light) and `create(settings)` (heavy)
    description: str


ENGINES: dict[str, EngineEntry] = {
    "espeak": EngineEntry("tts.espeak", "eSpeak NG (embedded default, no downloads)"),
    "gpt-sovits": EngineEntry("tts.gpt_sovits", "GPT-SoVITS v2/v2Pro voices via gsv-tts-lite"),
    "scripted": EngineEntry("tts.scripted", "deterministic tones of known speed (tests, benchmarks)"),
}


def voice_model(engine: str) -> type[VoiceParams]:
    """The pydantic model of this engine's `[voice]` table; importing it must stay cheap."""
    return importlib.import_module(ENGINES[engine].module).VOICE_MODEL


def create_engine(engine: str, settings: Settings) -> TTSEngine:
    """Build (not start) an engine. Raises ImportError when its package is not installed."""
    return importlib.import_module(ENGINES[engine].module).create(settings)


__all__ = ["ENGINES", "TTSEngine", "TTSError", "VoiceParams", "create_engine", "voice_model"]
