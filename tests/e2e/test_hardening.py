"""Hardening through the real server: cross-site requests, Host checks, header sizes, voice input
inside admission control, and an optional engine that fails to start."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from urllib.parse import unquote

import httpx
import pytest
import soundfile

from tests.e2e.conftest import scripted_env
from tests.e2e.test_voice_input import speech_wav
from tests.fixtures.openai_stt_stub import OpenAISTTStub
from tests.server import events_of, running_server
from tts.scripted import SAMPLE_RATE

JSON_BODY = json.dumps({"input": "Hello there, how are you?", "speaker": "Low"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    env = scripted_env(root, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002", stt_backend="openai",
                       stt_base_url="http://127.0.0.1:9/v1", stt_model="whisper-1")
    with running_server("app_non_stream", env, root / "server.log") as running:
        yield running


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_sent_as_a_simple_cross_site_request_is_refused(server, content_type):
    # A web page may send these without a CORS preflight; only application/json (which needs one) is read.
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(f"{server.base_url}/chat2audio", content=JSON_BODY, headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]["message"]


def test_curl_json_as_the_readme_writes_it(server):
    result = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--json", JSON_BODY, f"{server.base_url}/chat2audio"],
        capture_output=True, timeout=60,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    assert status == b"200", result.stderr
    audio, rate = soundfile.read(io.BytesIO(body))
    assert rate == SAMPLE_RATE and audio.size > 0


def test_a_page_of_another_site_cannot_post_a_form_or_upload(server):
    url = f"{server.base_url}/chat2audio"
    evil = {"Origin": "https://evil.example"}
    upload = httpx.post(url, data={"speaker": "Low"}, files={"audio": ("q.wav", speech_wav())}, headers=evil)
    assert upload.status_code == 403 and upload.json()["error"]["type"] == "forbidden"
    assert httpx.post(url, content=JSON_BODY, headers={**evil, "Content-Type": "application/json"}).status_code == 403
    assert httpx.delete(f"{server.base_url}/sessions/abc", headers=evil).status_code == 403
    same_site = {"Origin": server.base_url, "Content-Type": "application/json"}
    assert httpx.post(url, content=JSON_BODY, headers=same_site, timeout=60).status_code == 200


def test_dns_rebinding_host_is_refused(server):
    response = httpx.get(f"{server.base_url}/speakers", headers={"Host": "attacker.example:8000"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_host"
    assert httpx.get(f"{server.base_url}/speakers", headers={"Host": "localhost:8000"}).status_code == 200


def test_duplicated_content_type_is_refused_rather_than_read_two_ways(server):
    # The body limit once read the last header (multipart: 10 MiB) and the route the first (JSON).
    headers = [("Content-Type", "application/json"), ("Content-Type", "multipart/form-data; boundary=x")]
    response = httpx.post(f"{server.base_url}/chat2audio", content=JSON_BODY, headers=headers)
    assert response.status_code == 400 and "one Content-Type" in response.json()["error"]["message"]


def test_reply_text_headers_stay_small_for_long_chinese_replies(server):
    text = "这是一个很长的句子，用来测试回复文本的头部大小。" * 20
    body = {"input": text, "speaker": "Low", "max_new_tokens": 2000}
    response = httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=120)
    assert response.status_code == 200
    header_bytes = sum(len(k) + len(v) for k, v in response.headers.items())
    assert header_bytes < 4096
    assert "format=events" in response.headers["x-text-truncated"]
    shown = unquote(response.headers["x-reply-text"], errors="strict")
    assert shown and text.startswith(shown)


def test_voice_input_is_transcribed_inside_admission_and_stops_when_the_client_leaves(tmp_path):
    with OpenAISTTStub(transcript="Where is the harbour?", stall_s=30) as stub:
        env = scripted_env(tmp_path, stt_backend="openai", stt_base_url=stub.base_url, stt_model="stub-slow",
                           max_concurrent_requests="1", max_queued_requests="0")
        with running_server("app_stream", env, tmp_path / "server.log") as server:
            def ask_and_hang_up() -> None:
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(f"{server.base_url}/chat2audio", data={"speaker": "Low"},
                               files={"audio": ("q.wav", speech_wav())}, timeout=1.0)

            caller = threading.Thread(target=ask_and_hang_up)
            caller.start()
            time.sleep(0.5)  # the upload is being transcribed (the stub stalls)
            stats = httpx.get(f"{server.base_url}/stats").json()
            assert stats["admitted_requests"] == 1
            typed = httpx.post(f"{server.base_url}/chat2audio", json={"input": "Hi there.", "speaker": "Low"})
            assert typed.status_code == 503 and typed.headers["retry-after"]
            caller.join()
            deadline = time.monotonic() + 2
            while httpx.get(f"{server.base_url}/stats").json()["admitted_requests"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(f"{server.base_url}/stats").json()["admitted_requests"] == 0


def test_a_failed_optional_speech_to_text_keeps_chat_ready(tmp_path):
    env = scripted_env(tmp_path, stt_backend="transformers", stt_model=str(tmp_path / "no-such-whisper"))
    with running_server("app_stream", env, tmp_path / "server.log") as server:
        assert httpx.get(f"{server.base_url}/ready").status_code == 200
        body = {"input": "Hello there.", "speaker": "Low", "format": "text"}
        assert events_of(httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=60))[-1]["type"] == "done"
        voice = httpx.post(f"{server.base_url}/chat2audio", data={"speaker": "Low"}, files={"audio": ("q.wav", speech_wav())})
        assert voice.status_code == 503 and voice.json()["error"]["type"] == "voice_input_unavailable"
        assert "no-such-whisper" not in voice.text
