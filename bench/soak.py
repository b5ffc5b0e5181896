"""`python -m bench.soak`: hundreds of requests against the real server on loopback — sequential,
concurrent bursts, event streams, and clients that hang up mid-stream — then report threads and
memory before and after, and how fast the work of aborted requests stopped. A last phase hangs up
at random moments (before the headers, mid-sentence, between sentences; some in conversations)
and then counts what was left held: admission slots, running replies, conversation turns.

Exits non-zero if threads grew, work kept running for a gone client, memory kept growing, or
anything was left held after the random hang-ups.

`--abuse` runs the abuse phase instead (bench/abuse.py): each abusive request of issue 19 while
ordinary streams play, with the streams' worst stall and failures and /health's worst latency.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.measure import percentile
from tests.e2e.conftest import scripted_env
from tests.server import running_server

TEXT = "The harbour is close by. Follow the lanterns down the hill. The ships wait there for us."
LONG = " ".join(f"This is sentence number {n} of a long reply." for n in range(40))


@dataclass
class SoakReport:
    requests: int = 0
    aborted: int = 0
    failures: list[str] = field(default_factory=list)
    stop_latencies_s: list[float] = field(default_factory=list)
    threads_before: int = 0
    threads_after: int = 0
    rss_mb: list[float] = field(default_factory=list)
    random_hangups: int = 0
    leaked: dict[str, int] = field(default_factory=dict)  # what stayed held after the hang-ups

    @property
    def rss_slope_mb_per_100(self) -> float:
        """Memory trend over the second half of the run (the first half includes warm-up)."""
        samples = self.rss_mb[len(self.rss_mb) // 2 :]
        if len(samples) < 3:
            return 0.0
        step = max(1, self.requests // max(1, len(self.rss_mb)))
        slope = np.polyfit(np.arange(len(samples)) * step, samples, 1)[0]
        return float(slope * 100)

    def ok(self) -> bool:
        return (
            not self.failures
            and self.threads_after <= self.threads_before
            and max(self.stop_latencies_s, default=0) < 1.0
            and self.rss_slope_mb_per_100 < 5.0
            and not any(self.leaked.values())
        )

    def table(self) -> str:
        rows = [
            ("requests", str(self.requests)),
            ("of which aborted mid-stream", str(self.aborted)),
            ("failures", str(len(self.failures))),
            ("aborted work stopped after (p50 / max)",
             f"{percentile(self.stop_latencies_s, 50):.3f} s / {max(self.stop_latencies_s, default=0):.3f} s"),
            ("server threads before / after", f"{self.threads_before} / {self.threads_after}"),
            ("server RSS first / peak / last", f"{self.rss_mb[0]:.0f} / {max(self.rss_mb):.0f} / {self.rss_mb[-1]:.0f} MB"),
            ("RSS trend, second half", f"{self.rss_slope_mb_per_100:+.2f} MB per 100 requests"),
            ("hang-ups at random moments", str(self.random_hangups)),
            ("left held after them (slots / replies / turns)",
             " / ".join(str(self.leaked.get(k, 0)) for k in ("admitted_requests", "active_replies", "sessions_in_turn"))),
        ]
        return "| measure | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def soak(base_url: str, pid: int, requests: int, speaker: str = "Low") -> SoakReport:
    import psutil

    process = psutil.Process(pid)
    report = SoakReport()
    client = httpx.Client(base_url=base_url, timeout=60)

    def normal(body: dict) -> None:
        response = client.post("/chat2audio", json=body)
        if response.status_code != 200:
            report.failures.append(f"{response.status_code}: {response.text[:200]}")

    def aborted() -> None:
        with client.stream("POST", "/chat2audio", json={"input": LONG, "speaker": speaker}) as response:
            chunks = response.iter_raw()
            next(chunks)
        left = time.perf_counter()
        while client.get("/stats").json()["active_replies"] > 0:
            if time.perf_counter() - left > 5:
                report.failures.append("work still running 5 s after the client left")
                break
            time.sleep(0.01)
        report.stop_latencies_s.append(time.perf_counter() - left)
        report.aborted += 1

    normal({"input": TEXT, "speaker": speaker})  # warm-up
    report.threads_before = process.num_threads()
    report.rss_mb.append(process.memory_info().rss / 2**20)
    pattern = ["wav", "wav", "events", "burst", "abort"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        step = 0
        while report.requests < requests:
            kind = pattern[step % len(pattern)]
            step += 1
            if kind == "burst":  # concurrent streams
                list(pool.map(lambda _: normal({"input": TEXT, "speaker": speaker}), range(8)))
                report.requests += 8
            elif kind == "abort":
                aborted()
                report.requests += 1
            else:
                normal({"input": TEXT, "speaker": speaker, "format": kind})
                report.requests += 1
            report.rss_mb.append(process.memory_info().rss / 2**20)
    time.sleep(0.5)
    report.threads_after = process.num_threads()
    client.close()
    return report


def hang_up_at_random(base_url: str, pid: int, report: SoakReport, count: int, *, seed: int = 0, speaker: str = "Low") -> None:
    """`count` clients that each hang up after a random 0–1.5 s, 8 at a time, a third of them in
    one of three conversations; then what is still held, and whether each conversation still talks."""
    import psutil

    rng = random.Random(seed)
    host, port = base_url.removeprefix("http://").split(":")
    plans = [(rng.uniform(0, 1.5), rng.choice(["wav", "events"]), f"soak-{n % 3}" if n % 3 == 0 else None) for n in range(count)]

    def call_and_hang_up(plan: tuple[float, str, str | None]) -> None:
        delay, format_, session_id = plan
        body = {"input": LONG, "speaker": speaker, "format": format_} | ({"session_id": session_id} if session_id else {})
        payload = json.dumps(body).encode()
        head = (f"POST /chat2audio HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head + payload)
            deadline = time.perf_counter() + delay
            while (left := deadline - time.perf_counter()) > 0:  # read as a player would, then vanish
                sock.settimeout(left)
                try:
                    if not sock.recv(65536):
                        break
                except TimeoutError:
                    break

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(call_and_hang_up, plans))
    report.random_hangups += count
    with httpx.Client(base_url=base_url, timeout=60) as client:
        deadline = time.perf_counter() + 5
        while (stats := client.get("/stats").json())["admitted_requests"] and time.perf_counter() < deadline:
            time.sleep(0.05)
        report.leaked = {key: stats[key] for key in ("admitted_requests", "active_replies", "sessions_in_turn")}
        for n in range(3):
            body = {"input": TEXT, "speaker": speaker, "session_id": f"soak-{n}"}
            if (response := client.post("/chat2audio", json=body)).status_code != 200:
                report.failures.append(f"conversation soak-{n} after hang-ups: {response.status_code}")
    report.rss_mb.append(psutil.Process(pid).memory_info().rss / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--hangups", type=int, default=300, help="clients that hang up at random moments")
    parser.add_argument("--app", default="app_stream", choices=["app_stream", "app_non_stream"])
    parser.add_argument("--abuse", action="store_true",
                        help="instead: each abusive request of issue 19 in turn while listeners listen (bench/abuse.py)")
    parser.add_argument("--backend", default="embedded", choices=["embedded", "scripted"], help="--abuse: which backends")
    parser.add_argument("--listeners", type=int, default=4, help="--abuse: ordinary streams playing meanwhile")
    args = parser.parse_args()
    if args.abuse:
        from bench.abuse import abuse

        report, ok = abuse(args.app, backend=args.backend, listeners=args.listeners)
        print(report)
        sys.exit(0 if ok else 1)
    with tempfile.TemporaryDirectory(prefix="chat2audio-soak-") as tmp:
        env = scripted_env(Path(tmp), scripted_token_delay_s="0.005", scripted_tts_rtf="0.02")
        with running_server(args.app, env, Path(tmp) / "server.log") as server:
            started = time.perf_counter()
            report = soak(server.base_url, server.process.pid, args.requests)
            hang_up_at_random(server.base_url, server.process.pid, report, args.hangups)
            print(f"## Soak: {args.app}, scripted backends, {time.perf_counter() - started:.0f} s\n")
            print(report.table())
            for failure in report.failures[:10]:
                print("failure:", failure)
    sys.exit(0 if report.ok() else 1)


if __name__ == "__main__":
    main()
