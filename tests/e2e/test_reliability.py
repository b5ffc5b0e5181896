"""Reliability through the real server: unpronounceable text, overload, timeouts, isolation of
interleaved requests, engine faults mid-stream, CORS, and shutdown with replies in flight."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import scripted_env
from tests.server import PROJECT_ROOT, events_of, free_port, running_server
from tts.scripted import SAMPLE_RATE

LONG_SCRIPT = " ".join(f"This is sentence number {n} of a very long reply." for n in range(60))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    with running_server("app_stream", scripted_env(root), root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def non_stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability-ns")
    # Fast backends: 10k characters are ~2500 tokens and ~10 minutes of audio.
    env = scripted_env(root, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002")
    with running_server("app_non_stream", env, root / "server.log") as running:
        yield running


def chat(server, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=timeout)


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum) * SAMPLE_RATE / audio.size)


@pytest.mark.parametrize(
    "text",
    ["😀😀👍 !!! ……", "(laughs) *waves*", "\x01\x02\x07 hello \x1b[31m there", "y" * 10_000],
    ids=["emoji-only", "stage-directions-only", "control-chars", "10k-char-word"],
)
def test_text_the_tts_cannot_say_still_gives_a_valid_wav(non_stream, text):
    response = chat(non_stream, {"input": text, "speaker": "Low"})
    assert response.status_code == 200
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == SAMPLE_RATE
    if "y" * 100 in text:
        assert audio.size > 0  # cut into speakable pieces, all of it spoken
        spoken = unquote(response.headers["x-spoken-text"]).replace(" ", "")
        assert "x-text-truncated" in response.headers and text.startswith(spoken)  # headers stay small
        events = events_of(chat(non_stream, {"input": text, "speaker": "Low", "format": "text"}))
        assert events[-1]["spoken_text"].replace(" ", "") == text


def test_interleaved_requests_never_mix_voices_or_texts(non_stream):
    cases = [(f"Request {n} asks about the harbour at dawn.", "Low" if n % 2 else "High") for n in range(8)]

    def one(case):
        text, speaker = case
        response = chat(non_stream, {"input": text, "speaker": speaker})
        audio, _ = soundfile.read(io.BytesIO(response.content))
        return unquote(response.headers["x-reply-text"]), dominant_hz(audio)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, cases))
    for (text, speaker), (reply, hz) in zip(cases, results):
        assert reply == text
        assert abs(hz - (220 if speaker == "Low" else 880)) < 5


def test_client_leaving_an_event_stream_stops_the_work(server):
    with httpx.stream(
        "POST", f"{server.base_url}/chat2audio", json={"input": LONG_SCRIPT, "speaker": "Low", "format": "events"}, timeout=30
    ) as response:
        lines = response.iter_lines()
        assert json.loads(next(line for line in lines if line.startswith("data:"))[5:])["type"] == "start"
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server.base_url}/stats").json()
        if stats["active_replies"] == 0 and stats["llm_active_generations"] == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"work still running after the client left: {stats}")


def test_engine_failure_mid_stream_ends_the_stream_cleanly(server):
    body = {"input": "The first sentence is fine. The second has POISON in it. A third.", "speaker": "Fragile"}
    response = chat(server, body)
    assert response.status_code == 200
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == SAMPLE_RATE and audio.size > 0  # what was said before the failure, still a valid WAV
    request_id = response.headers["x-request-id"]
    assert f"request {request_id}: stream ended early" in server.log()
    events = chat(server, body | {"format": "events"}).text
    kinds = [json.loads(line[6:])["type"] for line in events.splitlines() if line.startswith("data: ")]
    assert kinds == ["start", "sentence", "error"]
    assert "scripted failure" in events


def test_engine_failure_before_any_audio_is_a_json_error(server):
    response = chat(server, {"input": "POISON right away.", "speaker": "Fragile"})
    assert response.status_code == 500
    assert response.json()["error"] == {"type": "upstream_error", "message": "TTS: scripted failure on 'POISON'"}


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """One reply at a time, nobody waiting, replies cut after 1.5 s."""
    root = tmp_path_factory.mktemp("tiny")
    env = scripted_env(root, max_concurrent_requests="1", max_queued_requests="0", request_timeout_s="1.5")
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def test_saturated_server_says_503_at_once_and_still_answers_health(tiny_server):
    url = tiny_server.base_url
    with httpx.stream("POST", f"{url}/chat2audio", json={"input": LONG_SCRIPT, "speaker": "Low"}, timeout=30) as busy:
        chunks = busy.iter_raw()
        next(chunks)
        started = time.perf_counter()
        response = httpx.post(f"{url}/chat2audio", json={"input": "Me too, please.", "speaker": "Low"}, timeout=30)
        assert time.perf_counter() - started < 0.5
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "overloaded"
        assert int(response.headers["retry-after"]) > 0
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200


def test_reply_over_the_request_timeout_is_504_or_cut(tiny_server):
    slow = {"input": "This is a sentence. " * 400, "speaker": "Low"}  # 2000 tokens × 50 ms: far beyond 1.5 s
    started = time.perf_counter()
    response = chat(tiny_server, slow | {"format": "events"})
    assert time.perf_counter() - started < 4
    kinds = [json.loads(line[6:])["type"] for line in response.text.splitlines() if line.startswith("data: ")]
    assert kinds[-1] == "error" and "longer than 1.5 s" in response.text
    # Nothing speakable before the deadline: an ordinary 504.
    response = chat(tiny_server, {"input": "(" + "x " * 200 + ")", "speaker": "Low"})
    assert response.status_code == 504


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cors")
    env = scripted_env(root, cors_origins='["http://app.example"]')
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def test_cors_is_closed_by_default_and_open_to_configured_origins(server, cors_server):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{server.base_url}/chat2audio", headers=preflight).headers
    allowed = httpx.options(f"{cors_server.base_url}/chat2audio", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(f"{cors_server.base_url}/chat2audio", headers=preflight | {"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_sigterm_with_a_reply_in_flight_shuts_down_within_the_grace_period(tmp_path):
    port = free_port()
    env = {**os.environ, **scripted_env(tmp_path, port=str(port), shutdown_grace_s="1"), "PYTHONPATH": str(PROJECT_ROOT)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "app_stream.py"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        received = []

        def listen():
            try:
                with httpx.stream("POST", f"{url}/chat2audio", json={"input": LONG_SCRIPT, "speaker": "Low"}, timeout=30) as r:
                    for chunk in r.iter_raw():
                        received.append(chunk)
            except httpx.HTTPError:
                pass

        client = threading.Thread(target=listen)
        client.start()
        while not received:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        # uvicorn ends by re-raising the signal once shutdown is complete.
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
        client.join(timeout=5)
        assert not client.is_alive()
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_events_carry_sentence_audio_as_valid_wavs(server):
    response = chat(server, {"input": "One sentence here. And another one there.", "speaker": "High", "format": "events"})
    sentences = [json.loads(line[6:]) for line in response.text.splitlines() if '"sentence"' in line]
    for event in sentences:
        audio, rate = soundfile.read(io.BytesIO(base64.b64decode(event["audio_wav_base64"])))
        assert rate == SAMPLE_RATE and abs(dominant_hz(audio) - 880) < 10
