"""The engine's counters, shared by the engine and its voice cache."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Where a sentence's synthesis time goes; "words" (aligning the words to the audio) is part of "vocoder".
STAGES = ("text", "gpt_prompt", "gpt_step", "vocoder", "words")


@dataclass
class EngineStats:
    """Counters for tests and benchmarks: what was loaded and how syntheses ended."""

    gpt_loads: int = 0
    sovits_loads: int = 0
    voice_loads: int = 0  # voices not in the cache that were loaded or tried (failures included)
    voice_preparations: int = 0  # voices loaded successfully
    evictions: int = 0
    completed: int = 0
    cancelled: int = 0
    tokens_last: int = 0  # GPT tokens of the last synthesis (25 per second of speech)
    largest_batch: int = 0  # the most sentences one GPT step has decoded together
    loaded: dict[str, float] = field(default_factory=dict)  # what start() loaded → seconds
    # Per stage (STAGES): seconds spent and how many times it ran (a GPT step counts once per batch).
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    stage_calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    vocoded_audio_s: float = 0.0  # seconds of audio the vocoder produced (its real-time factor's denominator)

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] += time.perf_counter() - began
            self.stage_calls[stage] += 1
