"""`python -m bench.llm_prefill`: how running replies keep their pace while a newcomer with a long
(~3 KB) system prompt is admitted, per prefill share (a step's prompt passes take about that many
decode steps' time), and what the rows' KV cache then holds.

The first row reproduces the design before chunked prefill: the whole prompt in one pass, and
every row padded to the longest. Replies are greedy and ignore end-of-sequence, so that the
running ones outlast the measurement. In-process (no HTTP): the batcher alone is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from llm import batching
from llm.base import ChatMessage, GenerationOptions
from llm.embedded import embedded_gguf_path
from llm.transformers_backend import TransformersBackend

UNBOUNDED = 10**9
RUNNING_OPTIONS = GenerationOptions(max_new_tokens=100_000, temperature=0.0, repetition_penalty=1.0)
NEWCOMER_OPTIONS = GenerationOptions(max_new_tokens=4, temperature=0.0, repetition_penalty=1.0)
NEWCOMER_QUESTION = "What happened on day 3?"
RUNNING_QUESTIONS = ["Tell me a long story about the sea.", "Describe a storm at sea.", "What do sailors eat?"]


def logbook(size: int) -> str:
    """A ship's logbook of about `size` characters: a long persona-like system prompt."""
    sides, sights = ["north", "east", "south", "west"], ["the Grey Cape", "Saltmere light", "gulls", "a fleet"]
    entries, day = [], 1
    while sum(len(entry) + 1 for entry in entries) < size:
        wind = f"wind from the {sides[day % 4]}, {5 + day % 30} knots"
        entries.append(f"Day {day}: {wind}; we sighted {sights[day % 4]}.")
        day += 1
    return "You are the ship's log keeper. The log so far: " + " ".join(entries)


@dataclass
class Run:
    label: str
    padding: str
    pace_before: float  # tokens/s of each running reply, mean, before the newcomer
    pace_during: float  # the same while the newcomer is admitted (until its first token)
    worst_gap_s: float  # the longest a running reply waited for its next token meanwhile
    first_token_s: float  # newcomer: request → first token
    kv_mb: float | None  # the rows' KV cache once the newcomer decodes beside them


async def measure(backend: TransformersBackend, running: int, system_prompt: str, settle_s: float) -> tuple:
    """Start the running replies, let them settle, then admit the newcomer; the running replies'
    steps are seen as the moments the token counter moves (text can lag tokens)."""
    steps: list[tuple[float, int]] = []

    async def keep_running(i: int) -> None:
        messages = [ChatMessage("system", "You are a sailor."), ChatMessage("user", RUNNING_QUESTIONS[i % 3])]
        async with aclosing(backend.stream_chat(messages, RUNNING_OPTIONS)) as pieces:
            async for _ in pieces:
                pass

    async def watch_steps() -> None:
        while True:
            if not steps or backend.tokens_generated != steps[-1][1]:
                steps.append((time.perf_counter(), backend.tokens_generated))
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(keep_running(i)) for i in range(running)]
    await asyncio.sleep(settle_s)  # all running, past their prefill
    tasks.append(asyncio.create_task(watch_steps()))
    await asyncio.sleep(settle_s)
    asked = time.perf_counter()
    messages = [ChatMessage("system", system_prompt), ChatMessage("user", NEWCOMER_QUESTION)]
    first_token, kv = asked, None
    async with aclosing(backend.stream_chat(messages, NEWCOMER_OPTIONS)) as pieces:
        async for _ in pieces:
            if first_token == asked:
                first_token = time.perf_counter()
                kv = getattr(backend._batcher, "kv_cache_bytes", None)
                break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    def pace(start: float, end: float) -> float:
        """Tokens per second of each running reply from `start` to `end` (the newcomer's first
        token is counted in neither window)."""
        counts = [count for t, count in steps if start <= t < end]
        return (counts[-1] - counts[0]) / running / (end - start) if len(counts) > 1 else 0.0

    moments = [t for t, _ in steps if t < first_token]
    gaps = [b - a for a, b in zip(moments, [*moments[1:], first_token]) if b > asked]
    return pace(steps[0][0], asked), pace(asked, first_token), max(gaps, default=0.0), first_token - asked, kv


async def main(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        # On a shared or busy CPU, two threads that wait on each other can take 10x longer.
        torch.set_num_threads(args.threads)
    source = Path(args.model) if args.model else embedded_gguf_path()
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.gettempdir()) / "chat2audio-bench"
    backend = TransformersBackend(model_source=source, cache_dir=cache, device=args.device, max_batch=args.running + 1)
    await backend.start()
    backend._batcher.eos_ids = set()  # the running replies must outlast the measurement
    system_prompt = logbook(args.prompt_chars)
    prompt_tokens = backend.count_tokens([ChatMessage("system", system_prompt), ChatMessage("user", NEWCOMER_QUESTION)])
    # Read, not assumed: the script also times code from before these knobs (then with --shares).
    chunk = getattr(batching, "PREFILL_CHUNK_TOKENS", UNBOUNDED)
    allowance = getattr(batching, "PADDING_ALLOWANCE_COLUMNS", UNBOUNDED)
    settings = [("one pass (before)", float("inf"), UNBOUNDED, UNBOUNDED)]
    settings += [(f"chunked, share {share:g}", share, chunk, allowance) for share in args.shares]
    runs = []
    try:
        for label, share, chunk, allowance in settings:
            batching.PREFILL_SHARE, batching.PREFILL_CHUNK_TOKENS = share, chunk
            batching.PADDING_ALLOWANCE_COLUMNS = allowance
            padding = "to the longest row" if allowance == UNBOUNDED else f"≤ real or {allowance} columns"
            result = await measure(backend, args.running, system_prompt, args.settle_s)
            runs.append(Run(label, padding, *result[:4], None if result[4] is None else result[4] / 2**20))
    finally:
        await backend.stop()
    import torch

    print(f"\n{backend.describe()}, {torch.get_num_threads()} CPU threads; {args.running} running replies; "
          f"newcomer prompt {len(system_prompt)} characters = {prompt_tokens} tokens\n")
    print("| prefill | padding | running tok/s before | running tok/s while admitted | worst running gap (s) "
          "| newcomer first token (s) | KV cache (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        kv = "–" if run.kv_mb is None else f"{run.kv_mb:.1f}"
        print(f"| {run.label} | {run.padding} | {run.pace_before:.1f} | {run.pace_during:.1f} | "
              f"{run.worst_gap_s:.2f} | {run.first_token_s:.2f} | {kv} |")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--cache-dir", help="where a .gguf's converted copy is kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--running", type=int, default=3, help="replies decoding when the newcomer arrives")
    parser.add_argument("--prompt-chars", type=int, default=3000, help="the newcomer's system prompt size")
    parser.add_argument("--shares", type=float, nargs="*", default=[2.0, 1.0, 0.5], help="PREFILL_SHARE values")
    parser.add_argument("--settle-s", type=float, default=1.5, help="running alone before measuring, and measured")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
