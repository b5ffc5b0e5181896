"""`python -m bench.soak`: hundreds of requests against the real server on loopback — sequential,
concurrent bursts, event streams, and clients that hang up mid-stream — then report threads and
memory before and after, and how fast the work of aborted requests stopped.

Exits non-zero if threads grew, work kept running for a gone client, or memory kept growing.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--app", default="app_stream", choices=["app_stream", "app_non_stream"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chat2audio-soak-") as tmp:
        env = scripted_env(Path(tmp), scripted_token_delay_s="0.005", scripted_tts_rtf="0.02")
        with running_server(args.app, env, Path(tmp) / "server.log") as server:
            started = time.perf_counter()
            report = soak(server.base_url, server.process.pid, args.requests)
            print(f"## Soak: {args.app}, scripted backends, {time.perf_counter() - started:.0f} s\n")
            print(report.table())
            for failure in report.failures[:10]:
                print("failure:", failure)
    sys.exit(0 if report.ok() else 1)


if __name__ == "__main__":
    main()
