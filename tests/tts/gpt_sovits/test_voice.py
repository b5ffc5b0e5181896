"""`tts.gpt_sovits.voice`: the `[voice]` table and how speaker files reach it."""

from __future__ import annotations

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
