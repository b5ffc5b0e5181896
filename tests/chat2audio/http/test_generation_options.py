"""Chat completions' sampling fields reach the LLM as the request sent them (issue 19, item 10:
`seed`, `stop`, `top_p` were accepted and ignored); `n` > 1 is refused, as OpenAI's SDK expects."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from chat2audio.http.app import create_app
from chat2audio.protocol.chat import ChatOptions
from chat2audio.settings import settings_from
from llm.base import GenerationOptions
from llm.scripted import ScriptedLLM
from tests.e2e.conftest import scripted_env


class RecordingLLM(ScriptedLLM):
    def __init__(self) -> None:
        super().__init__(token_delay_s=0.0)
        self.options: list[GenerationOptions] = []

    async def stream_chat(self, messages, options):
        self.options.append(options)
        async for piece in super().stream_chat(messages, options):
            yield piece


@pytest.fixture
def client_and_llm(tmp_path):
    app = create_app(settings_from(scripted_env(tmp_path)), streaming=True)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        deadline = time.monotonic() + 30
        while not app.state.service.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        app.state.service.llm = llm = RecordingLLM()
        yield client, llm


def chat(client: TestClient, **fields):
    body = {"model": "Low", "messages": [{"role": "user", "content": "Hello there."}], **fields}
    return client.post("/v1/chat/completions", json=body)


def test_seed_stop_and_top_p_reach_the_llm(client_and_llm):
    client, llm = client_and_llm
    assert chat(client, seed=1234, stop="END", top_p=0.5, temperature=0.3).status_code == 200
    assert chat(client, stop=["a", "bb"], stream=True).status_code == 200
    assert chat(client).status_code == 200
    first, second, plain = llm.options
    assert (first.seed, first.stop, first.top_p, first.temperature) == (1234, ("END",), 0.5, 0.3)
    assert second.stop == ("a", "bb") and second.seed is None
    assert plain.stop == () and plain.seed is None and plain.top_p == GenerationOptions.top_p


@pytest.mark.parametrize(("fields", "param"), [({"n": 2}, "n"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"top_p": 0}, "top_p")])
def test_what_cannot_be_honoured_is_an_openai_400(client_and_llm, fields, param):
    client, llm = client_and_llm
    response = chat(client, **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert not llm.options  # refused before any generation
    assert chat(client, n=1).status_code == 200


def test_chat2audio_takes_the_same_overrides(client_and_llm):
    client, llm = client_and_llm
    body = {"input": "Hello there.", "speaker": "Low", "format": "text", "seed": 5, "stop": ["x"], "top_p": 0.25}
    assert client.post("/chat2audio", json=body).status_code == 200
    assert (llm.options[0].seed, llm.options[0].stop, llm.options[0].top_p) == (5, ("x",), 0.25)
    assert ChatOptions(speaker="Low").stop is None
