"""Two replicas sharing conversations through a real redis-server started by the test."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.e2e.conftest import scripted_env
from tests.server import free_port, running_server, wait_until_idle

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_replicas_share_conversations_through_redis(redis_url, tmp_path):
    env = scripted_env(tmp_path, session_store="redis", redis_url=redis_url, session_max_turns="2", session_ttl_s="2")
    with running_server("app_stream", env, tmp_path / "a.log") as a, running_server("app_non_stream", env, tmp_path / "b.log") as b:
        for n, replica in enumerate([a, b, a]):
            body = {"input": f"Turn {n} here.", "speaker": "Low", "session_id": "shared"}
            assert httpx.post(f"{replica.base_url}/chat2audio", json=body, timeout=60).status_code == 200
        for replica in (a, b):
            turns = httpx.get(f"{replica.base_url}/sessions/shared", params={"speaker": "Low"}).json()["turns"]
            assert [t["content"] for t in turns] == ["Turn 1 here."] * 2 + ["Turn 2 here."] * 2
        assert httpx.delete(f"{b.base_url}/sessions/shared").status_code == 204
        assert httpx.get(f"{a.base_url}/sessions/shared", params={"speaker": "Low"}).json()["turns"] == []
        # Idle sessions expire in Redis too.
        body = {"input": "Short-lived.", "speaker": "Low", "session_id": "brief"}
        httpx.post(f"{a.base_url}/chat2audio", json=body, timeout=60)
        time.sleep(2.5)
        assert httpx.get(f"{b.base_url}/sessions/brief", params={"speaker": "Low"}).json()["turns"] == []


def test_a_reply_cut_short_by_a_hang_up_is_remembered_in_redis(redis_url, tmp_path):
    env = scripted_env(tmp_path, session_store="redis", redis_url=redis_url, scripted_tts_rtf="0.3")
    with running_server("app_stream", env, tmp_path / "server.log") as server:
        for turn in range(2):
            body = {"input": f"Turn {turn} starts here. " + "Then it goes on and on. " * 20, "speaker": "Low", "session_id": "cut"}
            with httpx.stream("POST", f"{server.base_url}/chat2audio", json=body, timeout=60) as response:
                received = 0
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    if received > 44 + 2 * 16000:  # a second of audio: the first sentence was spoken
                        break
            wait_until_idle(server)
        turns = httpx.get(f"{server.base_url}/sessions/cut", params={"speaker": "Low"}).json()["turns"]
        assert [t["role"] for t in turns] == ["user", "assistant"] * 2
        assert turns[1]["content"].startswith("Turn 0 starts here.") and len(turns[1]["content"]) < len(body["input"])


async def test_forgetting_a_session_touches_only_its_own_keys(redis_url):
    from chat2audio.sessions import RedisSessionStore

    store = RedisSessionStore(redis_url, max_turns=5, ttl_s=60, prefix="forget-test:")
    try:
        for speaker in ("Low", "High"):
            await store.remember(speaker, "gone", "hi", "hello")
        await store.remember("Low", "kept", "hi", "hello")

        def no_scan(*args, **kwargs):
            raise AssertionError("forget scanned the keyspace")

        store._redis.scan_iter = no_scan
        assert await store.forget("gone") == 2
        assert await store.history("Low", "gone") == [] and await store.history("High", "gone") == []
        assert len(await store.history("Low", "kept")) == 2
    finally:
        await store._redis.flushdb()
        await store.close()
