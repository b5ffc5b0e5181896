"""GPT-SoVITS voices through the real server, on tiny random-weight models in the real on-disk
formats: valid 32 kHz WAVs in both apps, availability in /speakers, and no network access."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import tiny_voices_env
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS
from tests.server import running_server

REPLY = SPOKEN_TEXTS[0] + SPOKEN_TEXTS[1]  # the scripted LLM says back what it is told


@pytest.fixture(scope="module")
def gsv_env(tiny_gsv_models_dir, tmp_path_factory) -> dict[str, str]:
    env = tiny_voices_env(tmp_path_factory.mktemp("gsv-service"), tiny_gsv_models_dir)
    # HF_HUB_OFFLINE is set by the server helper; a hub request would fail rather than hang.
    return env


@pytest.mark.parametrize("app", ["app_non_stream", "app_stream"])
def test_gpt_sovits_speaker_answers_with_a_32khz_wav(gsv_env, tmp_path, app):
    with running_server(app, gsv_env, tmp_path / "server.log") as server:
        speakers = {s["id"]: s for s in httpx.get(f"{server.base_url}/speakers").json()["speakers"]}
        assert speakers["Nahida"]["available"] and speakers["Nahida"]["sample_rate"] == 32000
        missing = speakers["Missing"]
        assert not missing["available"]
        for path in ("GPT_weights_v2/Nobody.ckpt", "SoVITS_weights_v2/Nobody.pth", "ref_audios/Nobody.wav"):
            assert path in missing["reason"]

        started = time.perf_counter()
        response = httpx.post(f"{server.base_url}/chat2audio", json={"input": REPLY, "speaker": "Nahida"}, timeout=300)
        assert response.status_code == 200, response.text
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 32000 and response.headers["x-sample-rate"] == "32000"
        assert 0.5 < audio.size / rate < 60
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.001
        assert time.perf_counter() - started < 240
        log = server.log()
        assert "huggingface.co" not in log and "Downloading" not in log


def test_concurrent_interleaved_voices_each_sound_exactly_as_alone(gsv_env, tmp_path):
    """Two voices with different weights, deterministic sampling: however the requests interleave,
    each reply is the audio that voice makes alone. Concurrent torch calls on CPU may sum floats in
    another order, so "the same" allows a few 16-bit steps; a mixed-up voice or reference is
    thousands of steps away."""
    from concurrent.futures import ThreadPoolExecutor

    text = SPOKEN_TEXTS[0]
    with running_server("app_non_stream", gsv_env, tmp_path / "server.log") as server:

        def speak(speaker: str) -> np.ndarray:
            response = httpx.post(f"{server.base_url}/chat2audio", json={"input": text, "speaker": speaker}, timeout=300)
            assert response.status_code == 200, response.text
            samples, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
            assert rate == 32000
            return samples.astype(np.int32)

        alone = {speaker: speak(speaker) for speaker in ("Nahida", "Klee")}
        order = ["Nahida", "Klee", "Klee", "Nahida"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(speak, order))

    def steps_apart(a: np.ndarray, b: np.ndarray) -> int:
        if a.size != b.size:
            return 1 << 16
        return int(np.abs(a - b).max())

    # 16-bit steps of float summation-order noise: 1 alone, up to 12 seen on a loaded 2-core machine.
    # A bf16 vocoder (CHAT2AUDIO_TTS_PRECISION=auto on a CPU with AVX512-BF16) rounds more: ~128 seen.
    rounding = 256
    assert steps_apart(alone["Nahida"], alone["Klee"]) > 800  # measured: 12,791
    for speaker, audio in zip(order, together):
        assert steps_apart(audio, alone[speaker]) <= rounding, f"{speaker} sounded different next to the other voice"
