"""Both production LLM backends through the real server: transformers on a tiny random Qwen2
(the exact on-disk format of Qwen2.5-7B), and openai against a real OpenAI-compatible SSE server
on loopback. Speech comes from the scripted TTS so that only the LLM path is under test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import soundfile

from tests.e2e.conftest import scripted_env
from tests.fixtures.openai_stub_server import OpenAIStubServer
from tests.fixtures.tiny_qwen2 import build_tiny_qwen2, special_token_ids
from tests.server import events_of, free_port, running_server, wait_until_idle
from tts.scripted import SAMPLE_RATE

# -- transformers on a tiny Qwen2 ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 whose end-of-turn token is suppressed, so a reply runs to its token limit:
    random weights would otherwise end at a random point, and the disconnect test needs a long one."""
    root = build_tiny_qwen2(tmp_path_factory.mktemp("models") / "tiny-qwen2", seed=0)
    config_path = root / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["suppress_tokens"] = list(special_token_ids(root))
    config_path.write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def qwen_server(tiny_qwen2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    env = scripted_env(
        root, llm_backend="transformers", llm_model=str(tiny_qwen2_dir), device="cpu", scripted_tts_rtf="0.01"
    )
    with running_server("app_stream", env, root / "server.log") as server:
        yield server


def test_transformers_backend_streams_a_reply_through_the_server(qwen_server):
    body = {"input": "做个自我介绍吧", "speaker": "Low", "format": "events", "max_new_tokens": 40, "temperature": 0}
    response = httpx.post(f"{qwen_server.base_url}/chat2audio", json=body, timeout=120)
    assert response.status_code == 200
    events = events_of(response)
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    done = events[-1]
    assert done["finish_reason"] == "length"
    assert done["text"]  # 40 random tokens decode to some text
    # Greedy decoding is deterministic: the same request gives the same reply.
    again = events_of(httpx.post(f"{qwen_server.base_url}/chat2audio", json=body, timeout=120))
    assert again[-1]["text"] == done["text"]


def test_transformers_backend_wav_stream_is_valid(qwen_server):
    body = {"input": "Hello, who are you?", "speaker": "High", "max_new_tokens": 60, "temperature": 0.8}
    response = httpx.post(f"{qwen_server.base_url}/chat2audio", json=body, timeout=120)
    assert response.status_code == 200
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == SAMPLE_RATE and audio.size > 0


def test_dropped_client_stops_generation_within_a_second(qwen_server):
    body = {"input": "Tell me everything.", "speaker": "Low", "max_new_tokens": 2048, "temperature": 0}
    with httpx.stream("POST", f"{qwen_server.base_url}/chat2audio", json=body, timeout=120) as response:
        chunks = response.iter_raw()
        next(chunks)
        assert httpx.get(f"{qwen_server.base_url}/stats").json()["llm_active_generations"] == 1
    assert wait_until_idle(qwen_server, timeout_s=1.0) < 1.0


# -- openai against a real SSE server --------------------------------------------------------


@pytest.fixture(scope="module")
def stub():
    reply = "Hello there, traveller. The harbour is close by. 我们一起去吧。"
    with OpenAIStubServer(reply=reply, piece_delay_s=0.03, api_key="upstream-key") as server:
        yield server


def openai_server(stub, root: Path, model: str = "role-play-7b", **settings):
    settings = {"llm_timeout_s": "5", **settings}
    env = scripted_env(
        root, llm_backend="openai", llm_base_url=stub.base_url, llm_model=model, llm_api_key="upstream-key", **settings
    )
    return running_server("app_stream", env, root / "server.log")


def test_openai_backend_speaks_the_upstream_reply(stub, tmp_path):
    with openai_server(stub, tmp_path) as server:
        body = {"input": "Where is the harbour?", "speaker": "Low", "format": "events", "temperature": 0.5}
        events = events_of(httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=60))
    sent = stub.requests[-1]
    assert sent.body["model"] == "role-play-7b" and sent.body["stream"] is True
    assert sent.body["temperature"] == 0.5
    assert [m["role"] for m in sent.body["messages"]] == ["system", "user"]
    assert sent.body["messages"][0]["content"] == "You are Low."
    assert sent.headers["authorization"] == "Bearer upstream-key"
    sentences = [e["text"] for e in events if e["type"] == "sentence"]
    assert sentences == ["Hello there, traveller.", "The harbour is close by.", "我们一起去吧。"]
    assert events[-1]["finish_reason"] == "stop"


def test_openai_client_leaving_closes_the_upstream_stream(stub, tmp_path):
    with openai_server(stub, tmp_path, model="stub-endless") as server:
        with httpx.stream("POST", f"{server.base_url}/chat2audio", json={"input": "Go on.", "speaker": "Low"}, timeout=60) as r:
            chunks = r.iter_raw()
            next(chunks)
        assert stub.streams[-1].disconnected.wait(1.0), "upstream stream still open after the client left"


@pytest.mark.parametrize(
    ("model", "status", "says"),
    [("stub-500", 502, "LLM: "), ("stub-401", 502, "LLM: "), ("stub-429", 503, "LLM: "), ("stub-slow-headers", 504, "LLM: ")],
)
def test_openai_upstream_errors_become_clear_gateway_errors(stub, tmp_path, model, status, says):
    with openai_server(stub, tmp_path, model=model, llm_timeout_s="1") as server:
        response = httpx.post(f"{server.base_url}/chat2audio", json={"input": "Hi.", "speaker": "Low"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["message"].startswith(says)
    assert "upstream-key" not in response.text


def test_openai_unreachable_upstream_is_503(tmp_path):
    class Nowhere:
        base_url = f"http://127.0.0.1:{free_port()}/v1"

    with openai_server(Nowhere, tmp_path) as server:
        response = httpx.post(f"{server.base_url}/chat2audio", json={"input": "Hi.", "speaker": "Low"}, timeout=60)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "upstream_error"


def test_openai_stream_cut_after_audio_started_ends_with_an_error_event(stub, tmp_path):
    with openai_server(stub, tmp_path, model="stub-cut") as server:
        body = {"input": "Hi.", "speaker": "Low", "format": "events"}
        events = events_of(httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=60))
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "upstream_error"
