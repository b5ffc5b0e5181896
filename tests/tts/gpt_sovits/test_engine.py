"""`tts.gpt_sovits.engine`: checks before any model loads, start-up, and synthesis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, tiny_voice
from tests.tts.gpt_sovits.helpers import (
    DETERMINISTIC,
    LONG,
    SAMPLES_PER_TOKEN,
    SHORT,
    assert_audio,
    collect,
    joined,
    summation_noise,
    unhurried,
)
from tts.base import HoldsVoices, TTSEngine, TTSError, WordTimings
from tts.gpt_sovits import GPTSoVITSEngine


def test_the_engine_is_a_tts_engine_that_holds_voices():
    assert isinstance(GPTSoVITSEngine(models_dir=Path("/nonexistent")), TTSEngine)
    assert isinstance(GPTSoVITSEngine(models_dir=Path("/nonexistent")), HoldsVoices)


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
    assert f"missing {', '.join(tiny_voice().model_files())} in the models dir" in problems
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



async def test_start_on_cuda_without_cuda_answers_503(tiny_gsv_models_dir, network_guard):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    engine = GPTSoVITSEngine(models_dir=tiny_gsv_models_dir, device="cuda")
    with pytest.raises(TTSError) as caught:
        await engine.start()
    assert caught.value.status == 503 and "CHAT2AUDIO_DEVICE=cuda" in str(caught.value)
    await engine.stop()

# -- synthesis --------------------------------------------------------------------------------------


async def test_synthesizes_a_sentence_at_32khz(gsv_engine):
    voice = tiny_voice()
    assert gsv_engine.device == "cpu"
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
        if isinstance(chunk, WordTimings):  # test_word_timing's subject
            continue
        if not chunks:
            completed_at_first_chunk = gsv_engine.stats.completed
        chunks.append(chunk)
    assert len(chunks) >= 2
    for chunk in chunks:
        assert_audio(chunk)
    assert completed_at_first_chunk == completed_before  # the synthesis was still running
    assert gsv_engine.stats.completed == completed_before + 1
    streamed, tokens = joined(chunks), gsv_engine.stats.tokens_last
    assert tokens > 2 * gsv_engine.chunks.size  # several chunks, the first ones small
    assert 0.5 * tokens * SAMPLES_PER_TOKEN <= streamed.size <= (tokens + 5) * SAMPLES_PER_TOKEN + 0.5 * 32000


async def test_sentence_without_words_yields_nothing(gsv_engine):
    assert await collect(gsv_engine, "……！", tiny_voice()) == []


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
    with unhurried():
        for name, text, streaming in jobs:
            alone[name, text, streaming] = joined(await collect(gsv_engine, text, voices[name], streaming=streaming))
    assert not np.array_equal(alone["TinyA", SHORT, False][:1000], alone["TinyB", SHORT, False][:1000])

    # All at once, A and B alternating: every request must get its own voice's audio. Concurrent
    # torch calls may sum floats in another order (up to 12 16-bit steps seen under load): allow
    # 64; the voices are over 12,000 apart.
    rounding = max(64 / 32768, summation_noise(gsv_engine))
    assert np.abs(alone["TinyA", SHORT, False][:1000] - alone["TinyB", SHORT, False][:1000]).max() > 800 / 32768
    with unhurried():
        together = await asyncio.gather(
            *(collect(gsv_engine, text, voices[name], streaming=streaming) for name, text, streaming in jobs)
        )
    for (name, text, streaming), chunks in zip(jobs, together):
        np.testing.assert_allclose(
            joined(chunks), alone[name, text, streaming], rtol=0, atol=rounding, err_msg=f"{name} {streaming}"
        )


async def test_a_streamed_sentence_s_text_is_encoded_once_and_sounds_as_when_encoded_per_chunk(gsv_engine, monkeypatch):
    """SoVITS re-encodes a sentence's phonemes at every streamed chunk; the engine encodes them at
    its first chunk and reuses that: one encoder call per sentence, the same samples."""
    from tts.gpt_sovits.text_encoding import TextEncodedOnce

    voice = tiny_voice(**DETERMINISTIC)
    with unhurried():
        await collect(gsv_engine, SHORT, voice)  # loads the voice
    vq_models = [model.vq_model for model in gsv_engine.cache.tts.sovits_models.values()]
    encoder_calls = []
    hooks = [model.enc_p.encoder_text.register_forward_hook(lambda *_: encoder_calls.append(1)) for model in vq_models]
    try:
        with unhurried():
            chunks = await collect(gsv_engine, LONG, voice, streaming=True)
        assert len(chunks) >= 3 and len(encoder_calls) == 1
        monkeypatch.setattr(TextEncodedOnce, "forward", lambda self, text, mask: self.encoder(text, mask))
        encoder_calls.clear()
        with unhurried():
            per_chunk = await collect(gsv_engine, LONG, voice, streaming=True)
        assert len(encoder_calls) == len(per_chunk) == len(chunks)
    finally:
        for hook in hooks:
            hook.remove()
    np.testing.assert_array_equal(joined(chunks), joined(per_chunk))
    assert not any(isinstance(model.enc_p.encoder_text, TextEncodedOnce) for model in vq_models)  # left as they were
