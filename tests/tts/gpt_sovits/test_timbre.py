"""A voice's timbre apart from its GPT prompt: styles keep the base voice's timbre, and blends."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.tiny_gpt_sovits import tiny_voice
from tests.tts.gpt_sovits.helpers import DETERMINISTIC, SHORT, collect, joined
from tts.base import TTSError
from tts.gpt_sovits.cache import voice_key

CLIP_A, CLIP_B = "ref_audios/TinyA.wav", "ref_audios/TinyB.wav"


def _features(engine, voice):
    """The prompt and `ge` the engine prepared for `voice` (loaded on its worker)."""
    prepared = engine.cache.voices[voice_key(voice, engine.models_dir)]
    tts = engine.cache.tts
    return tts.prompt_audio_cache[prepared.key]["prompt"], tts.spk_audio_cache[prepared.key]["ge"][prepared.sovits_key]


def _computed(engine, voice, clip):
    """The semantic prompt and `ge` of `clip` alone, computed here with the voice's SoVITS."""
    import torch

    tts = engine.cache.tts
    sovits = tts.sovits_models[str(engine.models_dir / voice.sovits_model)]
    path = str(engine.models_dir / clip)

    def compute():
        with torch.inference_mode():
            prompt = tts._get_prompt(tts.cnhubert_model, sovits, path)
            spectrum, audio_16k = tts._get_spec(sovits.hps, path)
            return prompt, sovits.vq_model.get_ge(spectrum, tts.sv_model.compute_embedding3(audio_16k))

    return engine._worker.submit(compute).result()


async def test_a_style_speaks_from_its_own_clip_with_the_base_voice_s_timbre(gsv_engine, monkeypatch):
    base = tiny_voice(**DETERMINISTIC)
    style = base.with_style({"ref_audio": CLIP_B, "ref_text": "你好，很高兴认识你。"})
    assert style.timbre == {CLIP_A: 1.0} and style.ref_audio == CLIP_B and style.top_k == 1

    tts = gsv_engine.cache.tts
    read = {"prompt": [], "spectrum": []}
    real_prompt, real_spec = tts._get_prompt, tts._get_spec
    # Spies that record the clip each reads, then compute with the real models.
    monkeypatch.setattr(
        tts, "_get_prompt", lambda hubert, model, path: read["prompt"].append(path) or real_prompt(hubert, model, path)
    )
    monkeypatch.setattr(tts, "_get_spec", lambda hps, path: read["spectrum"].append(path) or real_spec(hps, path))
    styled = joined(await collect(gsv_engine, SHORT, style))
    monkeypatch.undo()
    assert read == {"prompt": [str(gsv_engine.models_dir / CLIP_B)], "spectrum": [str(gsv_engine.models_dir / CLIP_A)]}

    prompt, ge = _features(gsv_engine, style)
    prompt_b, _ = _computed(gsv_engine, style, CLIP_B)
    _, ge_a = _computed(gsv_engine, style, CLIP_A)
    assert prompt.shape == prompt_b.shape and bool((prompt == prompt_b).all())
    assert bool((ge == ge_a).all())

    plain = joined(await collect(gsv_engine, SHORT, base))
    b_timbre = joined(await collect(gsv_engine, SHORT, style.model_copy(update={"timbre": None})))
    assert styled.size and not np.array_equal(styled[: plain.size], plain[: styled.size])
    assert not np.array_equal(styled[: b_timbre.size], b_timbre[: styled.size])  # the timbre is A's, not B's


async def test_a_blend_s_timbre_is_the_weighted_mean_of_its_clips(gsv_engine):
    import torch

    blend = tiny_voice(**DETERMINISTIC, timbre={CLIP_A: 1.0, CLIP_B: 3.0})
    alone_a = tiny_voice(**DETERMINISTIC, timbre={CLIP_A: 2.0})
    alone_b = tiny_voice(**DETERMINISTIC, timbre={CLIP_B: 0.5})
    audio = {"blend": joined(await collect(gsv_engine, SHORT, blend))}
    _, ge = _features(gsv_engine, blend)  # before other voices evict it
    for name, voice in (("a", alone_a), ("b", alone_b)):
        audio[name] = joined(await collect(gsv_engine, SHORT, voice))
        assert audio[name].size
    _, ge_a = _computed(gsv_engine, blend, CLIP_A)
    _, ge_b = _computed(gsv_engine, blend, CLIP_B)
    torch.testing.assert_close(ge.float(), (0.25 * ge_a + 0.75 * ge_b).float(), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(ge_a.float(), ge_b.float(), atol=1e-2)
    for other in ("a", "b"):
        n = min(audio["blend"].size, audio[other].size)
        assert np.abs(audio["blend"][:n] - audio[other][:n]).max() > 100 / 32768, other


async def test_missing_or_unreadable_timbre_clips_are_named(gsv_engine, tiny_gsv_models_dir):
    voice = tiny_voice(timbre={CLIP_A: 1.0, "ref_audios/Nobody.wav": 1.0})
    assert gsv_engine.check_voice(voice, tiny_gsv_models_dir) == [
        "missing timbre clip ref_audios/Nobody.wav in the models dir"
    ]
    with pytest.raises(TTSError) as caught:
        await collect(gsv_engine, SHORT, voice)
    assert caught.value.status == 503
    assert str(caught.value) == "missing timbre clip ref_audios/Nobody.wav in the models dir"

    (tiny_gsv_models_dir / "ref_audios" / "Garbled.wav").write_bytes(b"not audio")
    with pytest.raises(TTSError) as caught:
        await collect(gsv_engine, SHORT, tiny_voice(timbre={"ref_audios/Garbled.wav": 1.0}))
    assert caught.value.status == 503 and "ref_audios/Garbled.wav could not be loaded" in str(caught.value)
