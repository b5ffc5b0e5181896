"""Both apps end to end on the embedded default models (SmolLM2-135M + eSpeak NG): what a
newcomer gets from a fresh clone with no downloads."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from urllib.parse import unquote

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.ffmpeg import decode, needs_ffmpeg
from tests.server import PROJECT_ROOT, free_port, running_server, streamed_post

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
        body, arrivals = streamed_post(server.base_url, "/chat2audio", REQUEST, timeout=120)
        audio, rate = soundfile.read(io.BytesIO(body), dtype="float32")
        assert_audible_speech(audio, rate)
        assert len(arrivals) >= 2, "a multi-sentence reply should arrive in several chunks"
        assert arrivals[-1] - arrivals[0] > 0.1, "chunks should arrive at different times"


def test_a_fresh_start_is_quiet_and_sums_up_what_runs(tmp_path):
    """`python app_stream.py` as a newcomer runs it: nothing downloaded (an empty models dir). It
    prints no ERROR or WARNING, and at most 15 lines up to its summary."""
    port = free_port()
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT),
        "CHAT2AUDIO_PORT": str(port), "CHAT2AUDIO_MODELS_DIR": str(tmp_path / "models"),
    }
    process = subprocess.Popen(
        [sys.executable, "app_stream.py"], cwd=PROJECT_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read_output() -> None:  # a thread, so that waiting for a line can time out
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_output, daemon=True).start()
    printed: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any(line.lstrip().startswith("page ") for line in printed):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "the service exited:\n" + "".join(printed)
            printed.append(line)
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = "".join(printed)
    assert not [line for line in printed if "ERROR" in line or "WARNING" in line or "Traceback" in line], output
    assert len(printed) <= 15, output
    assert "chat2audio ready in" in output
    assert "can speak: Aria, Orion" in output
    assert "gpt-sovits: not started: its models are not downloaded" in output
    assert "python scripts/download_models.py" in output
    assert f"http://127.0.0.1:{port}/docs" in output


@needs_ffmpeg
def test_the_openai_sdk_hears_the_embedded_voices_in_every_format(embedded_env, tmp_path):
    """What the issue's done-when asks of a stock client: the official SDK, any key, the six
    speech formats, the SSE stream, and a chat completion whose audio is speech."""
    with running_server("app_stream", embedded_env, tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-anything", max_retries=0)
        text = "Hello there. Welcome to the harbour of Lumen."
        for response_format in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
            data = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=response_format).content
            if response_format == "pcm":
                audio = decode(data, rate=24000, input_format="s16le")
            else:
                audio = decode(data, rate=22050)
            seconds = audio.size / (24000 if response_format == "pcm" else 22050)
            assert 1.0 < seconds < 10, (response_format, seconds)
            assert np.sqrt(np.mean(audio**2)) > 0.01, f"{response_format}: silent"

        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="onyx", input=text, response_format="opus", stream_format="sse"
        ) as response:
            events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        assert {event["type"] for event in events[:-1]} == {"speech.audio.delta"} and events[-1]["type"] == "speech.audio.done"
        streamed = decode(b"".join(base64.b64decode(event["audio"]) for event in events[:-1]), rate=22050)
        assert np.sqrt(np.mean(streamed**2)) > 0.01

        completion = client.chat.completions.create(
            model="chat2audio", modalities=["text", "audio"], audio={"voice": "Aria", "format": "mp3"},
            messages=[{"role": "user", "content": "Hello, who are you?"}], max_tokens=60, temperature=0,
        )
        heard = completion.choices[0].message.audio
        assert len(heard.transcript.split()) >= 3
        speech = decode(base64.b64decode(heard.data), rate=22050)
        assert speech.size / 22050 > 1.0 and np.sqrt(np.mean(speech**2)) > 0.01
