"""`audio_of`: the audio of a synthesize stream without its word timings, and closing it closes
the engine's stream (a bench that stops at the first chunk must not leave synthesis running)."""

from __future__ import annotations

import numpy as np

from tts.base import WordTiming, WordTimings, audio_of


async def test_only_audio_comes_through_and_closing_it_closes_the_engine_stream():
    closed = []

    async def engine_stream():
        try:
            yield np.zeros(4, dtype=np.float32)
            yield WordTimings((WordTiming("hi", 0.0, 0.1),))
            yield np.ones(2, dtype=np.float32)
            yield np.ones(3, dtype=np.float32)
        finally:
            closed.append(True)

    assert [chunk.size for chunk in [c async for c in audio_of(engine_stream())]] == [4, 2, 3]
    assert closed == [True]

    closed.clear()
    audio = audio_of(engine_stream())
    assert (await anext(audio)).size == 4
    await audio.aclose()
    assert closed == [True]
