"""Does a full-size voice keep ahead of its listener when another process computes beside it?

    python -m bench.busy_neighbour [--busy 0.7] [--runs 3]

Starts the stream app on the full-size random-weight GPT-SoVITS voice (scripted LLM), speaks the
full-size e2e test's three-sentence reply once to warm up, starts a busy loop that computes for
`--busy` of every 50 ms on one core (another process on a shared machine: a CI runner's neighbour,
a second service), then listens `--runs` times as a player would: time to first audio, how often
and how long playback ran dry.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

BUSY_LOOP = """
import sys, time
busy = float(sys.argv[1])
while True:
    began = time.perf_counter()
    while time.perf_counter() - began < busy * 0.05:
        pass
    time.sleep((1 - busy) * 0.05)
"""


def main() -> None:
    from bench.concurrency import listen
    from tests.e2e.test_full_size_voice import REPLY, full_voice_service_env
    from tests.server import running_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=float, default=0.7, help="the busy loop's share of one core (0 = none)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = full_voice_service_env(root)
        body = {"input": REPLY, "speaker": "Nahida"}
        with running_server("app_stream", env, root / "server.log") as server:
            listen(server.base_url, {**body, "input": "你好。"})  # loads the voice
            neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(args.busy)]) if args.busy > 0 else None
            try:
                print(f"Busy loop: {args.busy:g} of a core.\n\n| run | TTFA (s) | underruns | stall (s) | audio (s) | wall (s) |")
                print("| --- | --- | --- | --- | --- | --- |")
                for run in range(1, args.runs + 1):
                    heard = listen(server.base_url, body)
                    ttfa = f"{heard.ttfa_s:.2f}" if heard.ttfa_s is not None else f"failed (HTTP {heard.status})"
                    print(
                        f"| {run} | {ttfa} | {heard.underruns} | {heard.stall_s:.2f} | "
                        f"{heard.audio_s:.1f} | {heard.total_s:.1f} |", flush=True,
                    )
            finally:
                if neighbour is not None:
                    neighbour.kill()


if __name__ == "__main__":
    main()
