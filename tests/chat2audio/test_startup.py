"""The start-up summary: one INFO record saying what runs, who can speak and what to fetch for
the others; missing optional voices only at DEBUG; a malformed speaker file still an ERROR that
names the file and the field."""

from __future__ import annotations

import logging

from chat2audio.settings import settings_from
from chat2audio.startup import startup_summary
from tests.e2e.conftest import scripted_env
from tests.inprocess import scripted_service

GPT_SOVITS_SPEAKER = """engine = "gpt-sovits"
[voice]
gpt_model = "GPT_weights_v2/Far.ckpt"
sovits_model = "SoVITS_weights_v2/Far.pth"
ref_audio = "ref_audios/Far.wav"
ref_text = "你好。"
"""


async def test_one_summary_at_info_and_an_error_only_for_the_malformed_file(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    scripted_env(tmp_path)  # the speaker and prompt dirs, to add a GPT-SoVITS character to
    (tmp_path / "speakers" / "Far.toml").write_text(GPT_SOVITS_SPEAKER)
    (tmp_path / "prompts" / "Far.md").write_text("You are far away.")
    async with scripted_service(tmp_path, models_dir=str(tmp_path / "models")) as service:
        assert service.ready
    above_info = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    # The one real failure: Broken.toml's voice table does not parse. Far's voice is only not downloaded.
    assert len(above_info) == 1, above_info
    level, message = above_info[0]
    assert level == "ERROR" and "Broken.toml" in message and "frequency_hz" in message
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("chat2audio ready")]
    lines = summary.splitlines()
    assert len(lines) <= 12, summary
    assert "  LLM       scripted (test replies, no model)" in lines
    assert "  TTS       gpt-sovits: not started: its models are not downloaded" in lines
    assert "  TTS       scripted: started" in lines
    assert "  speakers  3 of 5 can speak: Fragile, High, Low" in lines
    assert any("1 reply in text only until their voices are set up: Far" in line for line in lines)
    assert any("python scripts/download_models.py" in line for line in lines)
    assert any("1 broken, see the errors above: Broken" in line for line in lines)
    assert lines[-1].startswith("  page      http://127.0.0.1:8000/")
    # The details are still there for whoever turns DEBUG on.
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("speaker Far cannot speak: missing GPT_weights_v2/Far.ckpt") for m in debug)


def test_a_service_without_its_llm_says_so_first():
    settings = settings_from({"CHAT2AUDIO_LLM_BACKEND": "scripted"})
    summary = startup_summary(
        settings, seconds=1.3, llm=None, llm_error="LLM backend failed to start: model not found",
        engine_states={}, speakers=[], stt=None, stt_error=None,
    )
    assert summary.splitlines()[0] == (
        "chat2audio is NOT ready after 1.3 s: LLM backend failed to start: model not found (/ready answers 503)"
    )
