"""Start the real service (uvicorn in a subprocess) on a free loopback port, for end-to-end tests,
and read what it says back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_server(
    app: str, env: dict[str, str], log_path: Path, *, ready_timeout_s: float = 300, wait_for_ready: bool = True
) -> Iterator[Server]:
    """`app` is "app_stream" or "app_non_stream"; `env` adds CHAT2AUDIO_* settings. Yields once
    /ready says 200 (or, without `wait_for_ready`, once the process answers /health)."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    full_env["PYTHONPATH"] = str(PROJECT_ROOT)
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{app}:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=PROJECT_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                probe = "/ready" if wait_for_ready else "/health"
                if httpx.get(f"{server.base_url}{probe}", timeout=2, headers=_auth(env)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {ready_timeout_s} s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log_file.close()


def _auth(env: dict[str, str]) -> dict[str, str]:
    key = env.get("CHAT2AUDIO_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def events_of(response: httpx.Response) -> list[dict]:
    """The JSON events of a `format: events|text` reply (its `data:` lines)."""
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


def streamed_post(base_url: str, path: str, payload: dict, *, timeout: float) -> tuple[bytes, list[float]]:
    """POST `payload` and read the answer as it streams: its body, and when (seconds after the
    request) each chunk of it arrived. Asserts a 200."""
    arrivals: list[float] = []
    body = b""
    started = time.perf_counter()
    with httpx.stream("POST", f"{base_url}{path}", json=payload, timeout=timeout) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            body += chunk
            arrivals.append(time.perf_counter() - started)
    return body, arrivals


def wait_until_idle(server: Server, timeout_s: float = 2.0) -> float:
    """Seconds until the server reports no reply and no LLM generation running."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        stats = httpx.get(f"{server.base_url}/stats", timeout=5).json()
        if stats["active_replies"] == 0 and stats["llm_active_generations"] == 0:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"work still running {timeout_s} s after the client left: {stats}")
