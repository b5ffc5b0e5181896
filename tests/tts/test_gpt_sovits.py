"""The gpt-sovits engine on tiny random-weight models in the real formats: no mocks, no network."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from chat2audio.errors import SpeakerUnavailable
from chat2audio.settings import PROJECT_ROOT, Settings
from chat2audio.speakers import SpeakerRegistry, parse_speaker_file
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, start_tiny_engine, tiny_voice, write_speaker_toml
from chat2audio.wiring import create_tts
from tts.base import HoldsVoices, TTSEngine, TTSError, hold_voice
from tts.gpt_sovits import GPTSoVITSEngine

SHORT, LONG = SPOKEN_TEXTS[0], SPOKEN_TEXTS[2]
SAMPLES_PER_TOKEN = 32000 // 25  # one GPT token = 40 ms of audio at speed 1
DETERMINISTIC = {"top_k": 1, "noise_scale": 0.0}


async def collect(engine, text, voice, *, streaming=False) -> list[np.ndarray]:
    return [chunk async for chunk in engine.synthesize(text, voice, streaming=streaming)]


def joined(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def assert_audio(chunk: np.ndarray) -> None:
    assert chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.size > 0
    assert np.isfinite(chunk).all() and np.abs(chunk).max() <= 1.0


# -- the voice table -------------------------------------------------------------------------------


def test_voice_table_validates_paths_and_ranges():
    voice = tiny_voice()
    assert voice.model_files() == ["GPT_weights_v2/TinyA.ckpt", "SoVITS_weights_v2/TinyA.pth", "ref_audios/TinyA.wav"]
    for bad in ("/etc/passwd", "../outside.ckpt", "GPT/../../x.ckpt", "C:/x.ckpt", "a\\b.ckpt", ""):
        with pytest.raises(ValidationError):
            tiny_voice(gpt_model=bad)
    for field, value in [
        ("speed_factor", 3.0),
        ("top_k", 0),
        ("top_p", 0.0),
        ("temperature", 0),
        ("ref_language", "xx"),
    ]:
        with pytest.raises(ValidationError):
            tiny_voice(**{field: value})
    with pytest.raises(ValidationError):
        tiny_voice(unknown_field=1)
    assert isinstance(GPTSoVITSEngine(models_dir=Path("/nonexistent")), TTSEngine)
    assert isinstance(GPTSoVITSEngine(models_dir=Path("/nonexistent")), HoldsVoices)


def test_speaker_file_helper_parses_through_the_registry(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "TinyA.md").write_text("You are Tiny A.")
    path = write_speaker_toml(tmp_path / "speakers", "TinyA", top_k=1, speed_factor=1.25)
    speaker = parse_speaker_file(path, prompts)
    assert speaker.problems == () and speaker.engine == "gpt-sovits"
    assert speaker.voice == tiny_voice(top_k=1, speed_factor=1.25)


def test_import_is_cheap_and_create_needs_the_package(monkeypatch, tmp_path):
    code = "import sys, tts.gpt_sovits; print(sorted({'torch', 'gsv_tts', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    engine = create_tts("gpt-sovits", Settings(models_dir=tmp_path, device="cpu", tts_cache_size=3))
    assert (engine.models_dir, engine.device_setting, engine.cache_size) == (tmp_path, "cpu", 3)
    monkeypatch.setitem(sys.modules, "gsv_tts", None)  # as if gsv-tts-lite were not installed
    with pytest.raises(ImportError):
        create_tts("gpt-sovits", Settings(models_dir=tmp_path))


# -- checks before any model loads -------------------------------------------------------------------


def test_check_voice_names_missing_files_and_base_models(tiny_gsv_models_dir, tmp_path):
    engine = GPTSoVITSEngine(models_dir=tiny_gsv_models_dir)
    assert engine.check_voice(tiny_voice(), tiny_gsv_models_dir) == []

    problems = engine.check_voice(tiny_voice(sovits_model="SoVITS_weights_v2/Nobody.pth"), tiny_gsv_models_dir)
    assert problems == ["missing SoVITS_weights_v2/Nobody.pth in the models dir"]

    assert engine.check_voice(tiny_voice(ref_text="  "), tiny_gsv_models_dir) == [
        "ref_text is empty: write what ref_audio says"
    ]
    # English text needs the English g2p tables, which the tiny dir does not have.
    (english,) = engine.check_voice(tiny_voice(target_language="en"), tiny_gsv_models_dir)
    assert "g2p/en/cmudict.rep" in english and "lj1995/GPT-SoVITS" in english

    empty = tmp_path / "empty"
    empty.mkdir()
    problems = engine.check_voice(tiny_voice(), empty)
    for relative in tiny_voice().model_files():
        assert f"missing {relative} in the models dir" in problems
    base = problems[-1]
    for name in ("chinese-hubert-base/", "chinese-roberta-wwm-ext-large/", "sv/", "g2p/zh/opencpop-strict.txt"):
        assert name in base
    assert "scripts/download_models.py" in base


async def test_start_without_base_models_fails_fast_and_offline(tmp_path, network_guard):
    engine = GPTSoVITSEngine(models_dir=tmp_path)
    with pytest.raises(TTSError) as caught:
        await engine.start()
    assert caught.value.status == 503 and "chinese-hubert-base/" in str(caught.value)
    with pytest.raises(TTSError) as caught:
        await collect(engine, SHORT, tiny_voice())
    assert caught.value.status == 503
    await engine.stop()


# -- synthesis --------------------------------------------------------------------------------------


async def test_synthesizes_a_sentence_at_32khz(gsv_engine):
    voice = tiny_voice()
    assert gsv_engine.sample_rate(voice) == 32000
    chunks = await collect(gsv_engine, SHORT, voice)
    assert len(chunks) == 1
    audio = chunks[0]
    assert_audio(audio)
    assert np.abs(audio).max() > 0.01
    tokens = gsv_engine.stats.tokens_last
    # The GPT budget bounds the length: 10 + 2 per phoneme, each token 40 ms, plus 0.2 s of silence.
    assert 10 <= tokens <= 10 + 2 * 2 * len(SHORT)
    assert 0.5 * tokens * SAMPLES_PER_TOKEN <= audio.size <= (tokens + 5) * SAMPLES_PER_TOKEN + 0.2 * 32000


async def test_streaming_yields_the_first_chunk_before_the_sentence_is_done(gsv_engine):
    voice = tiny_voice(**DETERMINISTIC)
    completed_before = gsv_engine.stats.completed
    chunks, completed_at_first_chunk = [], None
    async for chunk in gsv_engine.synthesize(LONG, voice, streaming=True):
        if not chunks:
            completed_at_first_chunk = gsv_engine.stats.completed
        chunks.append(chunk)
    assert len(chunks) >= 2
    for chunk in chunks:
        assert_audio(chunk)
    assert completed_at_first_chunk == completed_before  # the synthesis was still running
    assert gsv_engine.stats.completed == completed_before + 1
    streamed, tokens = joined(chunks), gsv_engine.stats.tokens_last
    assert tokens > 2 * gsv_engine.stream_chunk_tokens
    assert 0.5 * tokens * SAMPLES_PER_TOKEN <= streamed.size <= (tokens + 5) * SAMPLES_PER_TOKEN + 0.5 * 32000


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


async def test_sentence_without_words_yields_nothing(gsv_engine):
    assert await collect(gsv_engine, "……！", tiny_voice()) == []


async def test_a_sentence_beyond_the_context_is_refused(gsv_engine):
    for text in ("天气很好" * 120, "好" * 501):  # 960 phonemes + the reference > 1024; too long to read
        with pytest.raises(TTSError) as caught:
            await collect(gsv_engine, text, tiny_voice(), streaming=True)
        assert caught.value.status == 422 and "too long" in str(caught.value)
    assert_audio(joined(await collect(gsv_engine, SHORT, tiny_voice())))


async def test_voice_parameters_are_honoured(gsv_engine):
    voice = tiny_voice(**DETERMINISTIC)
    (normal,) = await collect(gsv_engine, SHORT, voice)
    (again,) = await collect(gsv_engine, SHORT, voice)
    np.testing.assert_array_equal(normal, again)  # top_k=1 and no noise: deterministic
    (fast,) = await collect(gsv_engine, SHORT, tiny_voice(**DETERMINISTIC, speed_factor=2.0))
    assert 0.4 < fast.size / normal.size < 0.7
    (other_reference,) = await collect(gsv_engine, SHORT, tiny_voice(**DETERMINISTIC, ref_text="你好。"))
    assert not np.array_equal(normal[: other_reference.size], other_reference[: normal.size])
    sampled = [joined(await collect(gsv_engine, SHORT, tiny_voice(top_k=50, temperature=1.5))) for _ in range(2)]
    assert not np.array_equal(sampled[0][: sampled[1].size], sampled[1][: sampled[0].size])


async def test_speakers_stay_isolated_under_interleaving(gsv_engine):
    voices = {name: tiny_voice(name, **DETERMINISTIC) for name in ("TinyA", "TinyB")}
    jobs = [
        (name, text, streaming) for text in (SHORT, SPOKEN_TEXTS[1]) for streaming in (False, True) for name in voices
    ]
    alone = {}
    for name, text, streaming in jobs:
        alone[name, text, streaming] = joined(await collect(gsv_engine, text, voices[name], streaming=streaming))
    assert not np.array_equal(alone["TinyA", SHORT, False][:1000], alone["TinyB", SHORT, False][:1000])

    # All at once, A and B alternating: every request must get its own voice's audio. Concurrent
    # torch calls may sum floats in another order: allow 8 16-bit steps; the voices are far apart.
    rounding = 8 / 32768
    assert np.abs(alone["TinyA", SHORT, False][:1000] - alone["TinyB", SHORT, False][:1000]).max() > 100 * rounding
    together = await asyncio.gather(
        *(collect(gsv_engine, text, voices[name], streaming=streaming) for name, text, streaming in jobs)
    )
    for (name, text, streaming), chunks in zip(jobs, together):
        np.testing.assert_allclose(
            joined(chunks), alone[name, text, streaming], rtol=0, atol=rounding, err_msg=f"{name} {streaming}"
        )


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


async def speak_interleaved(engine, voices, *, hold: bool) -> list[str]:
    """One reply per voice, all at once, three sentences each; returns the voices in spoken order."""
    spoken = []

    async def reply(voice):
        async with hold_voice(engine, voice) if hold else contextlib.nullcontext():
            for text in (SHORT, SPOKEN_TEXTS[1], SHORT):
                await collect(engine, text, voice)
                spoken.append(voice.gpt_model)

    await asyncio.gather(*(reply(voice) for voice in voices))
    return spoken


async def test_held_voices_stay_loaded_through_interleaved_replies(tiny_gsv_models_dir, network_guard):
    engine = await asyncio.to_thread(start_tiny_engine, tiny_gsv_models_dir, cache_size=1)
    try:
        stats, voices = engine.stats, [tiny_voice("TinyA"), tiny_voice("TinyB")]
        spoken = await speak_interleaved(engine, voices, hold=False)
        switches = sum(a != b for a, b in zip(spoken, spoken[1:]))
        assert switches >= 3 and stats.voice_loads == 1 + switches  # unheld, one cached voice: a load per switch

        before = stats.voice_loads, stats.gpt_loads, stats.sovits_loads
        spoken = await speak_interleaved(engine, voices, hold=True)
        assert sum(a != b for a, b in zip(spoken, spoken[1:])) >= 3
        # Held: each voice loads at most once per reply (one of them may still be cached), whatever the order.
        assert stats.voice_loads - before[0] <= 2 and stats.gpt_loads - before[1] <= 2
        assert stats.sovits_loads - before[2] <= 2

        await engine._run(lambda: None)  # the trims queued when the replies let go have run
        assert len(engine._voices) == engine.cache_size  # idle again: back within the cache size
    finally:
        await engine.stop()
