"""A deterministic TTS of known speed for tests and benchmarks: each sentence becomes a tone whose
length follows the text and whose pitch is the voice's, taking `rtf` × its duration to "synthesize"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from chat2audio.runtime.text import speech_weight
from tts.base import TTSError, VoiceParams

SAMPLE_RATE = 16000
SECONDS_PER_WEIGHT = 0.06  # ~ one Latin letter


class ToneVoice(VoiceParams):
    frequency_hz: float = Field(440.0, gt=20, lt=8000)
    amplitude: float = Field(0.3, gt=0, le=1)
    fail_on: str | None = Field(None, description="fail on sentences containing this (fault tests)")


VOICE_MODEL = ToneVoice


class ScriptedTTS:
    name: ClassVar[str] = "scripted"
    voice_model: ClassVar[type[VoiceParams]] = ToneVoice

    def __init__(self, *, rtf: float = 0.1, stream_chunks: int = 4) -> None:
        self.rtf = rtf
        self.stream_chunks = stream_chunks
        self.active_syntheses = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def sample_rate(self, voice: VoiceParams) -> int:
        return SAMPLE_RATE

    def check_voice(self, voice: VoiceParams, models_dir: Path) -> list[str]:
        return []

    @staticmethod
    def duration_s(text: str) -> float:
        return max(1, speech_weight(text)) * SECONDS_PER_WEIGHT

    async def synthesize(self, text: str, voice: VoiceParams, *, streaming: bool = False) -> AsyncIterator[np.ndarray]:
        assert isinstance(voice, ToneVoice)
        if voice.fail_on and voice.fail_on in text:
            raise TTSError(f"scripted failure on {voice.fail_on!r}")
        samples = int(self.duration_s(text) * SAMPLE_RATE)
        tone = (voice.amplitude * np.sin(2 * np.pi * voice.frequency_hz * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
        parts = np.array_split(tone, self.stream_chunks if streaming else 1)
        self.active_syntheses += 1
        try:
            for part in parts:
                await asyncio.sleep(self.rtf * len(part) / SAMPLE_RATE)
                yield part
        finally:
            self.active_syntheses -= 1
