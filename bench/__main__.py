"""`python -m bench`: start the real servers on loopback and print markdown tables of
time-to-first-audio against the physical floor and the original design, overlap, service
overhead, concurrency and engine speeds. `--profiles full-voice` measures a full-size GPT-SoVITS voice
instead, per sentence and per precision, against gsv_tts and Genie-TTS (`bench.full_voice`). See the
Benchmarks section of README.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from bench.concurrency import CROWD_HEADER, crowd, listen
from bench.formats import FORMAT_HEADER, format_rows
from bench.measure import llm_speed, measure_floor, median, pipeline_in_process, tts_speed
from bench.profiles import PROFILES, FullVoiceProfile, Profile
from tests.server import running_server


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def run_profile(profile: Profile, concurrency: list[int], workdir: Path, repeats: int) -> str:
    out: list[str] = [f"## {profile.title}\n"]
    env = profile.server_env(workdir)
    backends = await profile.start_in_process(env)
    with ExitStack() as stack:
        ours = stack.enter_context(running_server("app_stream", env, workdir / f"{profile.name}-stream.log"))
        original = stack.enter_context(
            running_server("app_stream", {**env, "CHAT2AUDIO_TESTING__PIPELINE_MODE": "sequential"}, workdir / f"{profile.name}-seq.log")
        )
        for server in (ours, original):  # one throw-away reply each: first-request costs are not latency
            listen(server.base_url, profile.request(profile.prompts[0][1]))
        await pipeline_in_process(
            backends.llm, backends.tts, backends.voice, backends.messages(profile.prompts[0][1]), backends.options,
            backends.styles,
        )
        rows, ratios, vs_original, overlaps, overheads = [], [], [], [], []
        for label, text in profile.prompts:
            messages = backends.messages(text)
            body = profile.request(text)
            floors, ours_results, original_results = [], [], []
            for _ in range(repeats):  # each figure is the median run: one scheduler hiccup is not a result
                floors.append(await measure_floor(backends.llm, backends.tts, backends.voice, messages, backends.options))
                ours_results.append(listen(ours.base_url, body))
                original_results.append(listen(original.base_url, body))
            floor = median_by(floors, lambda f: f.floor_s)
            ours_result = median_by(ours_results, lambda r: r.ttfa_s)
            original_result = median_by(original_results, lambda r: r.ttfa_s)
            in_process = await pipeline_in_process(
                backends.llm, backends.tts, backends.voice, messages, backends.options, backends.styles
            )
            if ours_result.ttfa_s is None or original_result.ttfa_s is None:
                rows.append([label, "error", "", "", "", "", "", "", "", ""])
                continue
            ratio = ours_result.ttfa_s / floor.floor_s
            versus = ours_result.ttfa_s / original_result.ttfa_s
            overlap = ours_result.total_s / (floor.llm_total_s + floor.tts_total_s)
            overhead = ours_result.total_s / in_process
            ratios.append(ratio)
            vs_original.append(versus)
            overlaps.append(overlap)
            overheads.append(overhead)
            rows.append([
                label, str(len(floor.sentences)), fmt(floor.first_sentence_written_s), fmt(floor.first_chunk_s),
                fmt(floor.floor_s), fmt(ours_result.ttfa_s), fmt(ratio, 2), fmt(original_result.ttfa_s), fmt(versus, 2),
                fmt(ours_result.total_s), fmt(floor.llm_total_s + floor.tts_total_s), fmt(overlap, 2),
                fmt(in_process), fmt(overhead, 2),
            ])
        out.append(f"### Time to first audio (stream app, N = 1; each row the median of {repeats} runs), seconds\n")
        out.append(table(
            ["prompt", "sentences", "1st sentence written", "1st chunk synth", "floor", "TTFA", "TTFA/floor",
             "original TTFA", "ours/original", "stream total", "LLM+TTS total", "overlap", "in-process total", "HTTP/in-process"],
            rows,
        ))
        out.append("\n" + table(
            ["ratio", "median", "worst"],
            [
                ["TTFA / floor", fmt(median(ratios), 2), fmt(max(ratios, default=float("nan")), 2)],
                ["our TTFA / original design's TTFA", fmt(median(vs_original), 2), fmt(max(vs_original, default=float("nan")), 2)],
                ["overlap: stream total / (LLM total + TTS total)", fmt(median(overlaps), 2), fmt(max(overlaps, default=float("nan")), 2)],
                ["service overhead: HTTP total / in-process total", fmt(median(overheads), 2), fmt(max(overheads, default=float("nan")), 2)],
            ],
        ))
        out.append(formats_section(profile, ours, repeats))
        out.append(await concurrency_section(profile, env, workdir, concurrency, ours))
    out.append("### Engines (in-process)\n")
    speed = await tts_speed(backends.tts, profile.tts_probe_text, backends.voice)
    llm = await llm_speed(backends.llm, backends.messages(profile.llm_probe_text), backends.options, backends.count_tokens)
    out.append(table(
        ["stage", "engine", "first chunk / token (s)", "speed"],
        [
            ["TTS", backends.tts_label, fmt(speed.first_chunk_s), f"RTF {fmt(speed.rtf, 4)} ({fmt(speed.audio_s, 2)} s audio)"],
            ["LLM", backends.llm_label, fmt(llm.ttft_s), f"{fmt(llm.tokens_per_s, 1)} tokens/s ({llm.tokens} tokens)"],
        ],
    ))
    await backends.stop()
    return "\n".join(out) + "\n"


# The baseline: one reply at a time (a batch of one for the LLM and for GPT-SoVITS, sentences first come
# first served), as before batching and deadline scheduling.
ONE_AT_A_TIME_ENV = {
    "CHAT2AUDIO_LLM_MAX_BATCH": "1", "CHAT2AUDIO_TTS_MAX_BATCH": "1", "CHAT2AUDIO_TESTING__TTS_SCHEDULING": "fifo",
}
STAGGER_S = 0.5


async def concurrency_section(profile: Profile, env: dict, workdir: Path, concurrency: list[int], ours) -> str:
    """N streams at once and one every STAGGER_S, on this server and one reply at a time."""
    rows = []
    baseline_log = workdir / f"{profile.name}-one-at-a-time.log"
    with running_server("app_stream", {**env, **ONE_AT_A_TIME_ENV}, baseline_log) as one_at_a_time:
        listen(one_at_a_time.base_url, profile.request(profile.prompts[0][1]))  # warm-up, as for ours
        body = profile.request(profile.concurrency_prompt)
        for label, server in (("one reply at a time (max_batch=1)", one_at_a_time), ("batched + deadlines", ours)):
            for stagger in (0.0, STAGGER_S):
                for n in concurrency:
                    result = await crowd(server.base_url, server.process.pid, body, n, stagger_s=stagger)
                    rows.append([label, *result.row()])
    return (
        "\n### Concurrent streams\n\n"
        + table(["server", *CROWD_HEADER], rows)
        + "\n\nEach listener starts playing at its first audio byte, in real time; an underrun is a moment it had "
        "nothing to play before its reply ended. Requests beyond CHAT2AUDIO_MAX_CONCURRENT_REQUESTS wait for a slot.\n"
    )


def formats_section(profile: Profile, ours, repeats: int) -> str:
    """TTFA per output format, each the median of `repeats` runs, against WAV in the same run."""
    rows = format_rows(ours.base_url, profile.request(profile.concurrency_prompt), profile.tts_probe_text, profile.speaker, repeats)
    return (
        f"\n### Time to first audio per format (stream app, N = 1, median of {repeats}), seconds\n\n"
        + table(FORMAT_HEADER, rows)
        + "\n\n/chat2audio speaks the LLM's reply; /v1/audio/speech speaks the TTS probe text verbatim. "
        "\"vs WAV\" is the difference to WAV's TTFA through the same route in this run.\n"
    )


def median_by(runs: list, key):
    """The run whose key is the median (runs that failed, key None, sort last)."""
    ordered = sorted(runs, key=lambda run: (key(run) is None, key(run) or 0.0))
    return ordered[(len(ordered) - 1) // 2]


def _numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profiles", default="scripted,embedded", help=f"comma-separated: {', '.join(PROFILES)}")
    parser.add_argument("--concurrency", help="simultaneous streams to try (default 1,2,4,8,16; full-voice: 1,2,4)")
    parser.add_argument("--output", type=Path, help="also write the tables to this file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per prompt for the TTFA table (median run shown)")
    parser.add_argument("--tts-precisions", default="fp32,auto", help="full-voice: a row per GPT-SoVITS precision")
    parser.add_argument(
        "--genie-python", default=os.environ.get("BENCH_GENIE_PYTHON"),
        help="full-voice: the Python of a separate venv with genie-tts, torch and transformers, for the Genie-TTS "
        "anchor (default: $BENCH_GENIE_PYTHON; unset: that row says it was not run)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    header = (
        f"# chat2audio benchmark\n\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} · {platform.node()} · "
        f"{os.cpu_count()} CPUs · {platform.processor() or platform.machine()} · Python {platform.python_version()}\n\n"
        f"Command: `python -m bench {' '.join(sys.argv[1:])}`\n"
    )
    sections = [header]
    print(header, flush=True)
    with tempfile.TemporaryDirectory(prefix="chat2audio-bench-") as tmp:
        for name in args.profiles.split(","):
            profile = PROFILES[name]()
            if isinstance(profile, FullVoiceProfile):
                from bench.full_voice import run_full_voice

                concurrency = _numbers(args.concurrency) if args.concurrency else profile.concurrency
                section = asyncio.run(run_full_voice(  # printed part by part: it takes minutes
                    profile, Path(tmp), precisions=args.tts_precisions.split(","), concurrency=concurrency,
                    genie_python=args.genie_python, emit=lambda part: print(part, flush=True),
                ))
            else:
                concurrency = _numbers(args.concurrency or "1,2,4,8,16")
                section = asyncio.run(run_profile(profile, concurrency, Path(tmp), args.repeats))
                print(section, flush=True)
            sections.append(section)
    sections.append(f"_Whole run: {time.perf_counter() - started:.0f} s._\n")
    print(sections[-1])
    if args.output:
        args.output.write_text("\n".join(sections))


if __name__ == "__main__":
    main()
