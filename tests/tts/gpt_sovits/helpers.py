"""What the GPT-SoVITS tests share: texts, audio checks, and collecting a synthesis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from chat2audio.runtime.scheduling import speaking_by
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS

SHORT, LONG = SPOKEN_TEXTS[0], SPOKEN_TEXTS[2]
SAMPLES_PER_TOKEN = 32000 // 25  # one GPT token = 40 ms of audio at speed 1
DETERMINISTIC = {"top_k": 1, "noise_scale": 0.0}


async def collect(engine, text, voice, *, streaming=False) -> list[np.ndarray]:
    """The sentence's audio chunks (its `WordTimings` left out: `collect_items` keeps them)."""
    return audio_only(await collect_items(engine, text, voice, streaming=streaming))


async def collect_items(engine, text, voice, *, streaming=False) -> list:
    """Everything the engine yields for the sentence: audio chunks and `WordTimings`."""
    return [item async for item in engine.synthesize(text, voice, streaming=streaming)]


def audio_only(items: list) -> list[np.ndarray]:
    return [item for item in items if isinstance(item, np.ndarray)]


@contextmanager
def unhurried() -> Iterator[None]:
    """Syntheses started here are for listeners with an hour of audio still to play: the pacer
    never vocodes a chunk early, so a streamed sentence's chunks end where the schedule says, and
    two runs can be compared sample for sample however busy the machine."""
    with speaking_by(time.monotonic() + 3600):
        yield


def joined(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def assert_audio(chunk: np.ndarray) -> None:
    assert chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.size > 0
    assert np.isfinite(chunk).all() and np.abs(chunk).max() <= 1.0


def summation_noise(engine) -> float:
    """How far two syntheses of the same tokens may be apart: oneDNN may sum the vocoder's floats in
    another order from one call to the next, a few 16-bit steps in fp32; a bf16 vocoder rounds each
    layer's output to 8 bits of mantissa, so one flipped rounding grows to ~100 steps (seen: 128).
    Another token or another voice is thousands of steps away either way."""
    return (16 if engine.precision.vocoder == "fp32" else 256) / 32768
