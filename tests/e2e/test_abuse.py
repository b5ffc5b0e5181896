"""One client must never break, freeze or outlive the others (issue 19): each abusive request
of the audit, through the real server, gets a clear answer and leaves the service as it was."""

from __future__ import annotations

import json
import socket
import time

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


LONG = " ".join(f"This is sentence number {n} of a long reply." for n in range(60))


def silent_client(base_url: str, body: dict, path: str = "/chat2audio") -> socket.socket:
    """A client that asks for a long streamed reply, then never reads a byte of it (a receive
    buffer as small as the kernel allows, so the server's sends block soon)."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return sock


@pytest.mark.parametrize("format_", ["wav", "events"])
def test_a_client_that_stops_reading_gives_its_slot_back(tmp_path, format_):
    env = scripted_env(tmp_path, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002",
                       max_concurrent_requests="1", max_queued_requests="0", send_timeout_s="1")
    with running_server("app_stream", env, tmp_path / "server.log") as server:
        sockets = [silent_client(server.base_url, {"input": LONG, "speaker": "Low", "max_new_tokens": 2000, "format": format_})]
        try:
            time.sleep(1.0)  # its sends are blocked on the full window by now
            busy = httpx.post(f"{server.base_url}/chat2audio", json={"input": "Hi there.", "speaker": "Low"}, timeout=30)
            assert busy.status_code == 503  # it really held the one slot
            deadline = time.monotonic() + 6  # the send bound (1 s), and slack for a loaded machine
            while httpx.get(f"{server.base_url}/stats").json()["admitted_requests"] and time.monotonic() < deadline:
                time.sleep(0.1)
            stats = httpx.get(f"{server.base_url}/stats").json()
            assert (stats["admitted_requests"], stats["active_replies"], stats["llm_active_generations"]) == (0, 0, 0)
            again = httpx.post(f"{server.base_url}/chat2audio", json={"input": "Hi there.", "speaker": "Low"}, timeout=30)
            assert again.status_code == 200 and again.content
            assert "Traceback" not in server.log()
        finally:
            for sock in sockets:
                sock.close()
