"""One client must never break, freeze or outlive the others (issue 19): each abusive request
of the audit, through the real server, gets a clear answer and leaves the service as it was."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile

from tests.e2e.conftest import scripted_env
from tests.server import events_of, running_server

MAX_MESSAGES = 64
MAX_INPUT_CHARS = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("abuse")
    env = scripted_env(root, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002", max_input_chars=str(MAX_INPUT_CHARS),
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
    messages = [{"role": "system", "content": "s" * (MAX_INPUT_CHARS + 1)}, {"role": "user", "content": "Hello there."}]
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(messages), timeout=30)
    assert response.status_code == 400
    assert "messages[0]" in response.json()["error"]["message"] and str(MAX_INPUT_CHARS) in response.json()["error"]["message"]
    fine = [{"role": "system", "content": "s" * MAX_INPUT_CHARS}, {"role": "user", "content": "Hello there."}]
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


# -- edge inputs (items 5 and 9) --------------------------------------------------------------------

MARKUP = {
    "open brackets": "(" * MAX_INPUT_CHARS,
    "tags": "<b></b>" * (MAX_INPUT_CHARS // 7),
    "stars": "*" * MAX_INPUT_CHARS,
    "square brackets": "[" * MAX_INPUT_CHARS,
    "emoji": "😀" * (MAX_INPUT_CHARS // 2),
    "zero-width": "\u200b\u200d" * (MAX_INPUT_CHARS // 2),
    "nested tags": "<i>*(" * (MAX_INPUT_CHARS // 5),
    "dashes": "-" * MAX_INPUT_CHARS,
}


def test_markup_floods_keep_the_loop_free_and_never_answer_an_empty_200(server):
    """8 × 4,096 characters of markup at once: each is a 400 naming the problem (nothing to
    speak) or its spoken text, never a 200 with no audio; /health answers throughout."""
    health_latencies: list[float] = []
    done = threading.Event()

    def watch_health() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/health")
                health_latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    def speak(text: str) -> httpx.Response:
        body = {"input": text, "voice": "Low", "response_format": "wav"}
        return httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=60)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(MARKUP)) as pool:
            responses = dict(zip(MARKUP, pool.map(speak, MARKUP.values())))
    finally:
        done.set()
        watcher.join()
    for name, response in responses.items():
        if response.status_code == 200:
            audio, _ = soundfile.read(io.BytesIO(response.content))
            assert audio.size > 0, f"{name}: 200 with no audio"
        else:
            assert response.status_code == 400, (name, response.text)
            assert "nothing to speak" in response.json()["error"]["message"], name
    assert responses["emoji"].status_code == responses["zero-width"].status_code == 400
    assert max(health_latencies) < 1.0, f"/health took {max(health_latencies):.2f} s"


def test_speech_input_is_held_to_the_configured_limit(tmp_path):
    env = scripted_env(tmp_path, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002", max_input_chars="100")
    with running_server("app_stream", env, tmp_path / "server.log") as small:
        body = {"input": "word " * 20 + "x", "voice": "Low"}
        response = httpx.post(f"{small.base_url}/v1/audio/speech", json=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["param"] == "input"
        assert "100" in response.json()["error"]["message"] and "CHAT2AUDIO_MAX_INPUT_CHARS" in response.json()["error"]["message"]
        body["input"] = body["input"][:100]
        assert httpx.post(f"{small.base_url}/v1/audio/speech", json=body, timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/gsv/tts", "/gsv"])
def test_deeply_nested_json_is_an_api_v2_400_and_keeps_the_connection(server, path):
    nested = "[" * 10000 + "]" * 10000
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post(path, content=nested, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"message"} and "nested" in response.json()["message"]
        assert response.headers.get("connection") != "close"
        assert client.get("/health").status_code == 200  # the same kept-alive connection


# -- SSE speech that fails on the way (item 6) ------------------------------------------------------


def test_sse_speech_that_fails_midway_ends_with_an_error_event_not_done(server):
    body = {"input": "This first sentence is fine and long enough. Then POISON comes in the second one.",
            "voice": "Fragile", "stream_format": "sse", "response_format": "pcm"}
    response = httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200
    events = events_of(response)
    assert events[0]["type"] == "speech.audio.delta"  # the first sentence was heard
    assert [event["type"] for event in events if event["type"] != "speech.audio.delta"] == ["error"]
    error = events[-1]["error"]
    assert error["type"] == "server_error" and error["code"] and error["message"]
    assert "Traceback" not in error["message"]


# -- who may call (items 7 and 8) ---------------------------------------------------------------------

KEY = "the-abuse-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    env = scripted_env(root, scripted_token_delay_s="0.001", scripted_tts_rtf="0.002", api_key=KEY)
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def test_with_a_key_the_docs_and_schema_need_it_and_the_page_does_not(keyed):
    with httpx.Client(base_url=keyed.base_url, timeout=30) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "unauthorized", path
            assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200, path
        schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert "/chat2audio" in schema["paths"] and "/docs" not in schema["paths"]
        assert "/openapi.json" in client.get("/docs", headers={"Authorization": f"Bearer {KEY}"}).text
        # What stays public with a key set (the README lists it): health, the page and its files.
        for path in ("/health", "/", "/web/main.js", "/web/style.css"):
            assert client.get(path).status_code == 200, path


def test_a_cross_site_get_that_does_work_is_refused(server):
    params = {"text": "Hello there.", "text_lang": "en", "ref_audio_path": "x.wav", "prompt_lang": "en"}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            for path in ("/gsv/tts", "/gsv/"):
                response = client.get(path, params=params, headers=headers)
                assert response.status_code == 403, (path, headers, response.text)
            assert client.get("/speakers", headers=headers).status_code == 403
        same_site = {"Origin": server.base_url, "Sec-Fetch-Site": "same-origin"}
        assert client.get("/speakers", headers=same_site).status_code == 200
        assert client.get("/speakers").status_code == 200  # curl, SDKs: no Origin
