"""The stream app on a full-size GPT-SoVITS voice (the released models' shapes, random weights).

The other voice tests use the tiny voice, whose cost says nothing about a real one; this one checks
that, on this machine's CPU, a real-size voice keeps up with its listener: a three-sentence reply
plays from its first byte to its end without running dry. (How fast, in figures, is the
benchmark's: `python -m bench --profiles full-voice`.) A random GPT never says EOS, so each
sentence gets 3 tokens per phoneme, a real voice's rate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.concurrency import listen
from tests.e2e.conftest import scripted_env
from tests.fixtures.full_gpt_sovits import SPEAKER, full_size_models
from tests.fixtures.tiny_gpt_sovits import write_speaker_toml
from tests.server import running_server

REPLY = "你好，很高兴认识你。今天的风好舒服呀，我们去看看花吧！这是只存在于理论中的举动，我甚至不确定有谁敢做这样的事。"
# A listener's buffer may run dry this long in all (scheduling jitter on a busy CI machine), no more:
# a voice slower than speech runs dry for seconds per sentence.
ALLOWED_STALL_S = 0.3


def full_voice_service_env(root: Path) -> dict[str, str]:
    """The stream app's environment: speaker "Nahida" is the full-size voice, the LLM scripted."""
    env = scripted_env(
        root, models_dir=str(full_size_models()), device="cpu", scripted_token_delay_s="0.01",
        gpt_sovits_tokens_per_phone="3",
    )
    write_speaker_toml(root / "speakers", SPEAKER, speaker_id="Nahida", prompt="Low")
    return env


@pytest.fixture(scope="module")
def full_voice_env(tmp_path_factory) -> dict[str, str]:
    return full_voice_service_env(tmp_path_factory.mktemp("full-voice"))


def test_a_full_size_voice_streams_a_three_sentence_reply_without_running_dry(full_voice_env, tmp_path):
    with running_server("app_stream", full_voice_env, tmp_path / "server.log") as server:
        body = {"input": REPLY, "speaker": "Nahida"}
        listen(server.base_url, {**body, "input": "你好。"})  # loads the voice
        heard = listen(server.base_url, body)
    assert heard.status == 200
    assert heard.audio_s > 6  # three sentences of ~3 tokens per phoneme: about 10 s of speech
    assert heard.stall_s <= ALLOWED_STALL_S, (
        f"playback ran dry {heard.underruns} times, {heard.stall_s:.2f} s in all "
        f"(first audio {heard.ttfa_s:.2f} s, {heard.audio_s:.1f} s of audio in {heard.total_s:.1f} s)"
    )
