"""The engine's counters, shared by the engine and its voice cache."""

from __future__ import annotations

from dataclasses import dataclass, field


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
