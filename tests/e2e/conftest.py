"""Configurations for end-to-end servers on the scripted (deterministic) backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat2audio.settings import TestingSettings

TOKEN_DELAY_S = 0.05

SCRIPTED_SPEAKERS = {
    "Low": "frequency_hz = 220",
    "High": "frequency_hz = 880",
    "Fragile": 'frequency_hz = 440\nfail_on = "POISON"',
    "Broken": 'frequency_hz = "loud"',
}


def scripted_env(root: Path, **settings: str) -> dict[str, str]:
    """Speaker and prompt dirs holding the scripted tone voices, and the settings to serve them."""
    speakers, prompts = root / "speakers", root / "prompts"
    speakers.mkdir(parents=True, exist_ok=True)
    prompts.mkdir(parents=True, exist_ok=True)
    for name, voice in SCRIPTED_SPEAKERS.items():
        (speakers / f"{name}.toml").write_text(f'engine = "scripted"\n[voice]\n{voice}\n')
        (prompts / f"{name}.md").write_text(f"You are {name}.")
    return {
        "CHAT2AUDIO_SPEAKERS_DIR": str(speakers),
        "CHAT2AUDIO_PROMPTS_DIR": str(prompts),
        "CHAT2AUDIO_LLM_BACKEND": "scripted",
        "CHAT2AUDIO_TESTING__SCRIPTED_TOKEN_DELAY_S": str(TOKEN_DELAY_S),
        "CHAT2AUDIO_TESTING__SCRIPTED_TTS_RTF": "0.1",
        "CHAT2AUDIO_MAX_INPUT_CHARS": "12000",
        "CHAT2AUDIO_MAX_BODY_BYTES": "16384",
        "CHAT2AUDIO_LLM_MAX_NEW_TOKENS": "4000",
        **{_variable(key): value for key, value in settings.items()},
    }


def tiny_voices_env(root: Path, models_dir: Path) -> dict[str, str]:
    """The scripted LLM speaking through the tiny GPT-SoVITS voices: Nahida (TinyA) and Klee
    (TinyB), deterministic (top_k 1, no noise), and Missing, whose files are not there."""
    from tests.fixtures.tiny_gpt_sovits import write_speaker_toml

    env = scripted_env(root, models_dir=str(models_dir), device="cpu", scripted_token_delay_s="0.01")
    speakers = root / "speakers"
    write_speaker_toml(speakers, "TinyA", speaker_id="Nahida", prompt="Low", top_k=1, noise_scale=0.0)
    write_speaker_toml(speakers, "TinyB", speaker_id="Klee", prompt="Low", top_k=1, noise_scale=0.0)
    (speakers / "Missing.toml").write_text(
        'engine = "gpt-sovits"\nprompt = "Low"\n[voice]\ngpt_model = "GPT_weights_v2/Nobody.ckpt"\n'
        'sovits_model = "SoVITS_weights_v2/Nobody.pth"\nref_audio = "ref_audios/Nobody.wav"\nref_text = "你好。"\n'
    )
    return env


def _variable(setting: str) -> str:
    group = "TESTING__" if setting in TestingSettings.model_fields else ""
    return f"CHAT2AUDIO_{group}{setting.upper()}"


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory) -> dict[str, str]:
    return scripted_env(tmp_path_factory.mktemp("scripted"))
