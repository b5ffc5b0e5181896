"""Both apps end to end on the embedded default models (SmolLM2-135M + eSpeak NG): what a
newcomer gets from a fresh clone with no downloads."""

from __future__ import annotations

import io
import time
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import soundfile

from tests.server import running_server

pytestmark = pytest.mark.embedded
REQUEST = {"input": "Hello, who are you?", "speaker": "Aria", "temperature": 0}


@pytest.fixture(scope="module")
def embedded_env() -> dict[str, str]:
    return {"CHAT2AUDIO_LLM_MAX_NEW_TOKENS": "80"}


def assert_audible_speech(audio: np.ndarray, rate: int) -> None:
    assert rate == 22050
    assert audio.size / rate > 1.0, "a reply should last more than a second"
    assert np.sqrt(np.mean(audio**2)) > 0.01, "the WAV is silent"
    assert np.abs(audio).max() < 1.0, "the WAV clips"


def test_non_stream_app_speaks_the_models_reply(embedded_env, tmp_path):
    with running_server("app_non_stream", embedded_env, tmp_path / "server.log") as server:
        response = httpx.post(f"{server.base_url}/chat2audio", json=REQUEST, timeout=120)
        assert response.status_code == 200, response.text
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert_audible_speech(audio, rate)
        reply = unquote(response.headers["x-reply-text"])
        assert len(reply.split()) >= 3 and reply.isascii()


def test_stream_app_sends_audio_in_chunks_as_sentences_are_ready(embedded_env, tmp_path):
    with running_server("app_stream", embedded_env, tmp_path / "server.log") as server:
        arrivals: list[float] = []
        body = b""
        started = time.perf_counter()
        with httpx.stream("POST", f"{server.base_url}/chat2audio", json=REQUEST, timeout=120) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                body += chunk
                arrivals.append(time.perf_counter() - started)
        audio, rate = soundfile.read(io.BytesIO(body), dtype="float32")
        assert_audible_speech(audio, rate)
        assert len(arrivals) >= 2, "a multi-sentence reply should arrive in several chunks"
        assert arrivals[-1] - arrivals[0] > 0.1, "chunks should arrive at different times"
