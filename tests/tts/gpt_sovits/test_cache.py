"""`tts.gpt_sovits.cache`: voices loaded once, an LRU of idle voices, held voices, remembered failures."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from chat2audio.errors import SpeakerUnavailable
from chat2audio.speakers import SpeakerRegistry
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, start_tiny_engine, tiny_voice, write_speaker_toml
from tests.tts.gpt_sovits.helpers import SHORT, assert_audio, collect, joined
from tts.base import TTSError, hold_voice


async def test_unusable_voice_files_answer_503(gsv_engine, tiny_gsv_models_dir):
    import torch

    (tiny_gsv_models_dir / "GPT_weights_v2" / "Broken.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"weight": {}, "config": {}}, tiny_gsv_models_dir / "SoVITS_weights_v2" / "Broken.pth")
    (tiny_gsv_models_dir / "ref_audios" / "Broken.wav").write_bytes(b"not audio")
    unloadable = "voice file {} could not be loaded ({})".format
    for voice, says in [
        (tiny_voice(gpt_model="GPT_weights_v2/Missing.ckpt"), "missing GPT_weights_v2/Missing.ckpt in the models dir"),
        (
            tiny_voice(gpt_model="GPT_weights_v2/Broken.ckpt"),
            unloadable("GPT_weights_v2/Broken.ckpt", "not a GPT-SoVITS checkpoint"),
        ),
        (
            tiny_voice(sovits_model="SoVITS_weights_v2/Broken.pth"),  # a pickle, but not a SoVITS model
            unloadable("SoVITS_weights_v2/Broken.pth", "not a GPT-SoVITS v2 model"),
        ),
        (
            tiny_voice("TinyB", ref_audio="ref_audios/Broken.wav"),
            unloadable("ref_audios/Broken.wav", "not a readable audio clip"),
        ),
    ]:
        with pytest.raises(TTSError) as caught:
            await collect(gsv_engine, SHORT, voice)
        assert caught.value.status == 503 and str(caught.value) == says  # no exception text, no absolute path
    assert_audio(joined(await collect(gsv_engine, SHORT, tiny_voice("TinyB"))))


async def test_models_load_once_and_the_cache_is_an_lru(tiny_gsv_models_dir, network_guard):
    engine = await asyncio.to_thread(start_tiny_engine, tiny_gsv_models_dir, cache_size=2)
    try:
        stats = engine.stats
        a, a_other_reference, b = tiny_voice("TinyA"), tiny_voice("TinyA", ref_text="你好。"), tiny_voice("TinyB")

        def counts():
            return stats.gpt_loads, stats.sovits_loads, stats.voice_preparations

        await collect(engine, SHORT, a)
        await collect(engine, SHORT, a, streaming=True)
        await collect(engine, SPOKEN_TEXTS[1], a)
        assert counts() == (1, 1, 1)  # loaded once, reused
        await collect(engine, SHORT, a_other_reference)
        assert counts() == (1, 1, 2)  # a new reference, the same weights
        await collect(engine, SHORT, b)
        assert counts() == (2, 2, 3) and stats.evictions == 1  # a evicted; its weights still serve a'
        await collect(engine, SHORT, a)
        assert counts() == (2, 2, 4) and stats.evictions == 2  # a' evicted; a's weights never reloaded
        await collect(engine, SHORT, b)
        assert counts() == (2, 2, 4)
    finally:
        await engine.stop()


async def test_a_voice_that_failed_to_load_fails_fast_and_shows_unavailable_until_fixed(
    gsv_engine, tiny_gsv_models_dir, tmp_path
):
    corrupt = tiny_gsv_models_dir / "GPT_weights_v2" / "Corrupt.ckpt"
    corrupt.write_bytes(b"\x80\x02garbage, not a checkpoint")
    write_speaker_toml(tmp_path / "speakers", "TinyA", speaker_id="Corrupt", gpt_model="GPT_weights_v2/Corrupt.ckpt")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "Corrupt.md").write_text("You are Corrupt.")
    registry = SpeakerRegistry.scan(tmp_path / "speakers", tmp_path / "prompts")
    registry.attach_engines({"gpt-sovits": gsv_engine}, {}, tiny_gsv_models_dir)
    voice = registry.get("Corrupt").voice  # available: the file is there and nothing has read it yet
    reason = "voice file GPT_weights_v2/Corrupt.ckpt could not be loaded (not a GPT-SoVITS checkpoint)"
    loads = gsv_engine.stats.voice_loads

    for attempt in range(2):  # the second request fails at once: the file has not changed
        with pytest.raises(TTSError) as caught:
            await collect(gsv_engine, SHORT, voice)
        assert caught.value.status == 503 and str(caught.value) == reason
        assert gsv_engine.stats.voice_loads == loads + 1, f"attempt {attempt + 1} loaded the voice again"
    (listed,) = registry.all()  # what GET /speakers shows
    assert not listed.available and listed.reason == reason
    with pytest.raises(SpeakerUnavailable, match=re.escape(reason)):
        registry.get("Corrupt")

    shutil.copyfile(tiny_gsv_models_dir / "GPT_weights_v2" / "TinyA.ckpt", corrupt)  # fixed in place
    assert registry.get("Corrupt").available
    assert_audio(joined(await collect(gsv_engine, SHORT, voice)))
    assert gsv_engine.stats.voice_loads == loads + 2


async def speak_interleaved(engine, voices) -> list[str]:
    """One held reply per voice, all open at once, three sentences each, the voices taking turns
    sentence by sentence (A, B, A, …); returns the voices in spoken order."""
    spoken, turn = [], asyncio.Condition()

    async def reply(index, voice):
        async with hold_voice(engine, voice):
            for text in (SHORT, SPOKEN_TEXTS[1], SHORT):
                async with turn:
                    await turn.wait_for(lambda: len(spoken) % len(voices) == index)
                await collect(engine, text, voice)
                async with turn:
                    spoken.append(voice.gpt_model)
                    turn.notify_all()

    await asyncio.gather(*(reply(index, voice) for index, voice in enumerate(voices)))
    return spoken


async def test_held_voices_stay_loaded_through_interleaved_replies(tiny_gsv_models_dir, network_guard):
    engine = await asyncio.to_thread(start_tiny_engine, tiny_gsv_models_dir, cache_size=1)
    try:
        stats, voices = engine.stats, [tiny_voice("TinyA"), tiny_voice("TinyB")]
        # Unheld, one cached voice, sentences alternating: each switch evicts one and loads the other.
        for text in (SHORT, SPOKEN_TEXTS[1], SHORT):
            for voice in voices:
                await collect(engine, text, voice)
        assert stats.voice_loads == 6

        before = stats.voice_loads, stats.gpt_loads, stats.sovits_loads
        spoken = await speak_interleaved(engine, voices)
        assert sum(a != b for a, b in zip(spoken, spoken[1:])) >= 3
        # Held: each voice loads at most once per reply (one of them may still be cached), whatever the order.
        assert stats.voice_loads - before[0] <= 2 and stats.gpt_loads - before[1] <= 2
        assert stats.sovits_loads - before[2] <= 2

        await engine._run(lambda: None)  # the trims queued when the replies let go have run
        assert len(engine.cache.voices) == engine.cache_size  # idle again: back within the cache size
    finally:
        await engine.stop()
