"""One client must never break, freeze or outlive the others (issue 19): each abusive request
of the audit, through the real server, gets a clear answer and leaves the service as it was."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import scripted_env
from tests.server import running_server

MAX_MESSAGES = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("abuse")
    env = scripted_env(root, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002", max_input_chars="500",
                       max_messages=str(MAX_MESSAGES), max_body_bytes="65536")
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def chat_body(messages: list[dict], **fields) -> dict:
    return {"model": "Low", "messages": messages, **fields}


def test_a_chat_of_too_many_messages_is_refused_naming_the_limit(server):
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": "x"} for n in range(1701)]
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(messages), timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert str(MAX_MESSAGES) in error["message"] and "CHAT2AUDIO_MAX_MESSAGES" in error["message"]
    assert error["param"] == "messages"


def test_every_chat_message_is_held_to_the_input_limit(server):
    messages = [{"role": "system", "content": "s" * 501}, {"role": "user", "content": "Hello there."}]
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(messages), timeout=30)
    assert response.status_code == 400
    assert "messages[0]" in response.json()["error"]["message"] and "500" in response.json()["error"]["message"]
    fine = [{"role": "system", "content": "s" * 500}, {"role": "user", "content": "Hello there."}]
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(fine), timeout=30).status_code == 200
