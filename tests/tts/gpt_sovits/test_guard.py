"""`tts.gpt_sovits.guard`: each GPT pass bounded by the context and aborted on cancellation."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.tiny_gpt_sovits import tiny_voice
from tests.tts.gpt_sovits.helpers import DETERMINISTIC, LONG, SHORT, assert_audio, collect, joined
from tts.base import TTSError


async def test_closing_the_stream_early_stops_the_worker(gsv_engine):
    voice = tiny_voice(**DETERMINISTIC)
    await collect(gsv_engine, LONG, voice, streaming=True)
    full_tokens, cancelled_before = gsv_engine.stats.tokens_last, gsv_engine.stats.cancelled

    stream = gsv_engine.synthesize(LONG, voice, streaming=True)
    first = await anext(stream)
    assert_audio(first)
    await stream.aclose()  # returns once the worker has stopped
    assert gsv_engine.stats.cancelled == cancelled_before + 1
    assert gsv_engine.stats.tokens_last < full_tokens

    # A cancelled whole-sentence request stops too, and the engine keeps working.
    task = asyncio.create_task(collect(gsv_engine, LONG, voice))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_audio(joined(await collect(gsv_engine, SHORT, voice)))


async def test_a_sentence_beyond_the_context_is_refused(gsv_engine):
    for text in ("天气很好" * 120, "好" * 501):  # 960 phonemes + the reference > 1024; too long to read
        with pytest.raises(TTSError) as caught:
            await collect(gsv_engine, text, tiny_voice(), streaming=True)
        assert caught.value.status == 422 and "too long" in str(caught.value)
    assert_audio(joined(await collect(gsv_engine, SHORT, tiny_voice())))
