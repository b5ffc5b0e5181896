"""Many conversations at once, measured as their listeners hear them.

Each client starts playing at its first audio byte and plays in real time; an underrun is a
moment it has nothing to play before its reply has ended (it counts how often, and for how
long playback stalled). N clients arrive all at once or one every `stagger_s` seconds.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from bench.measure import PeakRSS, percentile

WAV_HEADER_BYTES = 44


@dataclass
class Listener:
    """One client's stream, as a player would have it."""

    status: int = 0
    ttfa_s: float | None = None
    total_s: float = 0.0
    audio_s: float = 0.0
    underruns: int = 0
    stall_s: float = 0.0
    _runs_dry_at: float | None = field(default=None, repr=False)

    def heard(self, at: float, seconds: float) -> None:
        """`seconds` of audio arrived `at` (seconds since the request was sent)."""
        if self._runs_dry_at is None:
            self.ttfa_s, self._runs_dry_at = at, at  # playback starts with the first byte
        elif at > self._runs_dry_at:
            self.underruns += 1
            self.stall_s += at - self._runs_dry_at
            self._runs_dry_at = at
        self._runs_dry_at += seconds
        self.audio_s += seconds


def listen(base_url: str, body: dict, *, timeout_s: float = 600) -> Listener:
    """POST to the stream app and follow the reply as a player would: first audio byte, end,
    audio received, underruns."""
    listener = Listener()
    client = httpx.Client(timeout=timeout_s)  # built before the clock starts (its TLS context takes ~20 ms)
    started = time.perf_counter()
    try:
        with client, client.stream("POST", f"{base_url}/chat2audio", json=body) as response:
            listener.status = response.status_code
            if response.status_code != 200:
                response.read()
                return listener
            bytes_per_second = 2 * int(response.headers["x-sample-rate"])
            header_left = WAV_HEADER_BYTES
            for chunk in response.iter_raw():
                audio_bytes = max(0, len(chunk) - header_left)
                header_left = max(0, header_left - len(chunk))
                if audio_bytes:
                    listener.heard(time.perf_counter() - started, audio_bytes / bytes_per_second)
    except httpx.HTTPError:  # cut off: a failed run, whatever audio came first
        listener.status, listener.ttfa_s = 0, None
    listener.total_s = time.perf_counter() - started
    return listener


@dataclass
class Crowd:
    """N listeners and what the server did for them."""

    n: int
    stagger_s: float
    listeners: list[Listener]
    wall_s: float
    llm_tokens: int
    peak_rss_mb: float

    @property
    def ok(self) -> list[Listener]:
        return [item for item in self.listeners if item.status == 200 and item.ttfa_s is not None]

    def row(self) -> list[str]:
        ok = self.ok
        ttfas = [item.ttfa_s for item in ok]
        return [
            str(self.n), f"{self.stagger_s:g}", _fmt(percentile(ttfas, 50)), _fmt(percentile(ttfas, 95)),
            _fmt(self.llm_tokens / self.wall_s, 1), _fmt(sum(item.audio_s for item in ok) / self.wall_s, 2),
            str(sum(item.underruns for item in ok)), _fmt(sum(item.stall_s for item in ok), 2),
            str(len(self.listeners) - len(ok)), f"{self.peak_rss_mb:.0f}",
        ]


CROWD_HEADER = [
    "N", "arrivals every (s)", "TTFA p50", "TTFA p95", "LLM tokens/s (all)", "audio s per wall s",
    "underruns", "stall s", "errors", "peak RSS (MB)",
]


async def crowd(base_url: str, pid: int, body: dict, n: int, *, stagger_s: float = 0.0) -> Crowd:
    """N clients, the i-th arriving at i × `stagger_s`; tokens counted by the server's /stats.

    Each client has a thread of its own: asyncio's default pool has only cpu_count + 4 threads
    (6 on 2 cores), which would hold the 7th client back until one of the first six finished."""
    tokens_before = _llm_tokens(base_url)
    loop = asyncio.get_running_loop()

    async def arrive(index: int) -> Listener:
        await asyncio.sleep(index * stagger_s)
        return await loop.run_in_executor(clients, listen, base_url, body)

    started = time.perf_counter()
    with PeakRSS(pid) as rss, ThreadPoolExecutor(max_workers=n, thread_name_prefix="listener") as clients:
        listeners = list(await asyncio.gather(*(arrive(index) for index in range(n))))
    wall_s = time.perf_counter() - started
    return Crowd(n, stagger_s, listeners, wall_s, _llm_tokens(base_url) - tokens_before, rss.peak_mb)


def _llm_tokens(base_url: str) -> int:
    return httpx.get(f"{base_url}/stats", timeout=10).json().get("llm_tokens_generated", 0)


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"
