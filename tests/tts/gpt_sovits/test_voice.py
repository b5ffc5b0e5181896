"""`tts.gpt_sovits.voice`: the `[voice]` table and how speaker files reach it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chat2audio.speakers import parse_speaker_file
from tests.fixtures.tiny_gpt_sovits import tiny_voice, write_speaker_toml


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


def test_speaker_file_helper_parses_through_the_registry(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "TinyA.md").write_text("You are Tiny A.")
    path = write_speaker_toml(tmp_path / "speakers", "TinyA", top_k=1, speed_factor=1.25)
    speaker = parse_speaker_file(path, prompts)
    assert speaker.problems == () and speaker.engine == "gpt-sovits"
    assert speaker.voice == tiny_voice(top_k=1, speed_factor=1.25)


def test_timbre_weights_are_validated_with_a_clear_message():
    voice = tiny_voice(timbre={"ref_audios/TinyA.wav": 1.0, "ref_audios/TinyB.wav": 3.0})
    assert voice.timbre_weights() == {"ref_audios/TinyA.wav": 0.25, "ref_audios/TinyB.wav": 0.75}
    assert voice.model_files()[-1] == "ref_audios/TinyB.wav" and len(voice.model_files()) == 4  # TinyA.wav once
    assert tiny_voice().timbre_weights() == {"ref_audios/TinyA.wav": 1.0}
    for bad, says in [
        ({}, "name at least one clip"),
        ({"ref_audios/TinyB.wav": 0.0}, "weights must be finite numbers > 0"),
        ({"ref_audios/TinyB.wav": -1.0}, "ref_audios/TinyB.wav = -1.0"),
        ({"ref_audios/TinyB.wav": float("inf")}, "weights must be finite numbers > 0"),
        ({"../outside.wav": 1.0}, "must stay inside the models dir"),
    ]:
        with pytest.raises(ValidationError) as caught:
            tiny_voice(timbre=bad)
        assert says in str(caught.value) and "timbre" in str(caught.value)


def test_a_style_that_changes_ref_audio_keeps_the_base_voice_s_timbre():
    from tts.gpt_sovits.cache import voice_key

    base = tiny_voice(top_k=3)
    style = base.with_style({"ref_audio": "ref_audios/TinyB.wav", "ref_text": "你好。"})
    assert style.timbre == {"ref_audios/TinyA.wav": 1.0} and style.top_k == 3
    assert base.with_style({"ref_text": "你好。"}).timbre is None  # same clip: same timbre already
    blended = tiny_voice(timbre={"ref_audios/TinyB.wav": 2.0})
    assert blended.with_style({"ref_audio": "ref_audios/TinyB.wav"}).timbre == {"ref_audios/TinyB.wav": 2.0}
    assert base.with_style({"ref_audio": "ref_audios/TinyB.wav", "timbre": {"x.wav": 1.0}}).timbre == {"x.wav": 1.0}
    with pytest.raises(ValidationError):
        base.with_style({"timbre": {"x.wav": 0}})
    hash(style)  # voices stay hashable with a timbre

    models = Path("/models")
    even = tiny_voice(timbre={"ref_audios/TinyA.wav": 1.0, "ref_audios/TinyB.wav": 1.0})
    uneven = tiny_voice(timbre={"ref_audios/TinyA.wav": 1.0, "ref_audios/TinyB.wav": 2.0})
    keys = {voice_key(v, models) for v in (base, style, blended, even, uneven)}
    assert len(keys) == 5  # the timbre's clips and (normalised) weights are part of the cache key
    assert voice_key(blended, models) == voice_key(tiny_voice(timbre={"ref_audios/TinyB.wav": 1.0}), models)


def test_a_speaker_file_s_style_and_timbre_tables_reach_the_voice(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "TinyA.md").write_text("You are Tiny A.")
    path = write_speaker_toml(tmp_path / "speakers", "TinyA")
    with path.open("a", encoding="utf-8") as toml:
        toml.write('\n[styles.happy]\nref_audio = "ref_audios/TinyB.wav"\nref_text = "你好，很高兴认识你。"\n')
    speaker = parse_speaker_file(path, prompts)
    assert speaker.problems == () and speaker.voice_problems == ()
    happy = speaker.styles["happy"]
    assert happy.ref_audio == "ref_audios/TinyB.wav" and happy.timbre == {"ref_audios/TinyA.wav": 1.0}

    blended = write_speaker_toml(tmp_path / "speakers", "TinyA", speaker_id="Blend")
    text = blended.read_text(encoding="utf-8").replace(
        "[voice]\n", '[voice]\ntimbre = { "ref_audios/TinyA.wav" = 1.0, "ref_audios/TinyB.wav" = 0 }\n'
    )
    blended.write_text(text, encoding="utf-8")
    (prompts / "Blend.md").write_text("You are a blend.")
    problems = parse_speaker_file(blended, prompts).voice_problems
    assert len(problems) == 1 and "Blend.toml" in problems[0] and "voice.timbre" in problems[0], problems
    assert "weights must be finite numbers > 0" in problems[0]
