"""`tts.gpt_sovits.batching`: concurrent sentences share the GPT's steps, and each still gets exactly
its own audio."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, tiny_voice
from tests.tts.gpt_sovits.helpers import (
    DETERMINISTIC,
    LONG,
    SHORT,
    assert_audio,
    audio_only,
    collect,
    joined,
    summation_noise,
    unhurried,
)


async def wait_until(condition, timeout_s: float = 5.0) -> float:
    """Seconds until `condition()` held (polled every 5 ms); fails after `timeout_s`."""
    began = time.perf_counter()
    while not condition():
        assert time.perf_counter() - began < timeout_s, "condition never held"
        await asyncio.sleep(0.005)
    return time.perf_counter() - began


async def test_sentences_decoded_together_are_sample_for_sample_what_each_makes_alone(gsv_engine):
    voices = {name: tiny_voice(name, **DETERMINISTIC) for name in ("TinyA", "TinyB")}
    jobs = [(name, text, streaming) for name in voices for text in (SHORT, LONG, SPOKEN_TEXTS[1]) for streaming in (False, True)]
    with unhurried():
        alone = {job: joined(await collect(gsv_engine, job[1], voices[job[0]], streaming=job[2])) for job in jobs}
        gsv_engine.stats.largest_batch = 0

        together = await asyncio.gather(*(collect(gsv_engine, text, voices[name], streaming=s) for name, text, s in jobs))

    assert gsv_engine.stats.largest_batch >= 4  # they did share steps (six per GPT at most)
    # The same GPT tokens give the same length and samples, to the vocoder's summation noise.
    rounding = summation_noise(gsv_engine)
    for job, chunks in zip(jobs, together):
        assert_audio(joined(chunks))
        assert joined(chunks).size == alone[job].size, job
        np.testing.assert_allclose(joined(chunks), alone[job], rtol=0, atol=rounding, err_msg=str(job))


async def test_a_newcomer_joins_the_running_batch_and_speaks_before_it_ends(gsv_engine):
    for newcomer_voice in ("TinyA", "TinyB"):  # the same GPT as the running sentence, and another GPT
        running = asyncio.create_task(collect(gsv_engine, LONG * 2, tiny_voice("TinyA", **DETERMINISTIC)))
        await wait_until(lambda: len(gsv_engine._batcher.rows) == 1)
        newcomer = gsv_engine.synthesize(SHORT, tiny_voice(newcomer_voice, **DETERMINISTIC), streaming=True)
        first = await anext(newcomer)
        assert_audio(first)
        assert not running.done(), f"{newcomer_voice} waited for the running sentence to end"
        await newcomer.aclose()
        assert_audio(joined(await running))


async def test_a_hung_up_sentence_leaves_the_batch_at_once_and_the_rest_finish(gsv_engine):
    voice = tiny_voice(**DETERMINISTIC)
    (whole,) = await collect(gsv_engine, LONG, voice)
    streams = [gsv_engine.synthesize(LONG, voice, streaming=True) for _ in range(3)]
    firsts = await asyncio.gather(*(anext(stream) for stream in streams))
    assert gsv_engine._batcher.active == 3
    cancelled_before = gsv_engine.stats.cancelled

    await streams[0].aclose()  # the listener hangs up mid-sentence
    freed_after = await wait_until(lambda: gsv_engine._batcher.active == 2, timeout_s=1.0)
    assert gsv_engine.stats.cancelled == cancelled_before + 1 and freed_after < 1.0

    rest = [[first] + audio_only([item async for item in stream]) for first, stream in zip(firsts[1:], streams[1:])]
    for chunks in rest:  # the others go on to the end of their sentence
        assert joined(chunks).size > 0.8 * whole.size
    assert gsv_engine._batcher.active == 0
    await wait_until(lambda: gsv_engine._batcher.batches == {}, timeout_s=1.0)  # idle: no KV cache held


async def test_a_failing_batch_loop_fails_its_sentences_and_the_next_one_still_runs(gsv_engine, monkeypatch):
    from tts.base import TTSError

    def broken_admit():
        raise RuntimeError("simulated bug in the loop")

    monkeypatch.setattr(gsv_engine._batcher, "_admit", broken_admit)
    with pytest.raises(TTSError) as caught:
        await collect(gsv_engine, SHORT, tiny_voice())
    assert caught.value.status == 500 and "server log" in str(caught.value)
    monkeypatch.undo()
    assert_audio(joined(await collect(gsv_engine, SHORT, tiny_voice())))
