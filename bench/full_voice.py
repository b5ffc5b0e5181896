"""The full-size voice profile: GPT-SoVITS on a random-weight voice of the released models' shapes
(`tests.fixtures.full_gpt_sovits`), per sentence in-process and through the stream app, with
gsv_tts' own `infer_stream` and Genie-TTS on the same weights as anchors.

Each in-process row (our engine at one precision, gsv_tts, Genie) runs in a child process of its
own, so its peak RSS is its own; the children stay loaded and take the sentences in turn, so
machine noise falls on every row alike. A child answers one JSON line per JSON line it is sent:

    python -m bench.full_voice ours --precision fp32 --models-dir DIR
    python -m bench.full_voice gsv --models-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chat2audio.settings import PROJECT_ROOT

# A random GPT never emits EOS: every sentence runs to its budget, MIN_TOKENS + TOKENS_PER_PHONE × phonemes
# (real speech is ~3 tokens per phoneme, so the audio is about as long as a real voice would make).
TOKENS_PER_PHONE = 3.0
MIN_TOKENS = 10
# The server's budget: its engine takes MIN_TOKENS (10) and this setting's tokens per phoneme.
BUDGET_SETTING = "CHAT2AUDIO_TESTING__GPT_SOVITS_TOKENS_PER_PHONE"

# The test voice's three sentences (10, 17 and 28 characters) and a long one (44).
LONGER_TEXT = "昨天晚上下了一场大雨，街上的积水还没有退去，孩子们穿着雨靴在水坑里跳来跳去，笑得特别开心。"
REPLY_TIMEOUT_S = 600
SEMANTIC_HZ = 25  # GPT tokens per second of speech: every row's RTF is over tokens / 25 s


def sentences() -> list[str]:
    from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS

    return [*SPOKEN_TEXTS, LONGER_TEXT]


# -- the children ------------------------------------------------------------------------------


def _reply_channel():
    """Keep the real stdout for replies; libraries' prints (gsv_tts logs) go to stderr."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return replies


def _described(plan) -> str | None:
    """What the engine chose for its precision setting (engines before precisions: None)."""
    return plan.describe() if hasattr(plan, "describe") else (str(plan) if plan is not None else None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _serve_ours(args: argparse.Namespace) -> None:
    from tests.fixtures.full_gpt_sovits import full_voice
    from tts.base import audio_of
    from tts.gpt_sovits import GPTSoVITSEngine

    replies = _reply_channel()
    voice = full_voice(top_k=1, noise_scale=0.0)
    engine = GPTSoVITSEngine(
        models_dir=args.models_dir, device="cpu", precision=args.precision,
        min_tokens=MIN_TOKENS, tokens_per_phone=TOKENS_PER_PHONE,
    )
    began = time.perf_counter()
    await engine.start()
    async for _ in engine.synthesize("你好。", voice):  # loads the voice; first-call costs are not latency
        pass
    async for _ in engine.synthesize("你好。", voice, streaming=True):
        pass
    stats = engine.stats
    replies.write(json.dumps({
        "ready": True, "load_s": time.perf_counter() - began,
        "precision": _described(getattr(engine, "precision", None)) or args.precision,
        "chunk_ends": [engine.chunks.end(index) for index in range(6)],
    }) + "\n")
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        request = json.loads(line)
        seconds, calls, vocoded = dict(stats.stage_seconds), dict(stats.stage_calls), stats.vocoded_audio_s
        began, first = time.perf_counter(), None
        async for _chunk in audio_of(engine.synthesize(request["text"], voice, streaming=True)):
            first = first if first is not None else time.perf_counter() - began
        streamed_s = time.perf_counter() - began
        spent = {stage: stats.stage_seconds[stage] - seconds[stage] for stage in seconds}
        steps = stats.stage_calls["gpt_step"] - calls["gpt_step"]
        result = {
            "first_chunk_s": first, "stream_s": streamed_s, "tokens": stats.tokens_last, "text_s": spent["text"],
            "gpt_prompt_s": spent["gpt_prompt"], "gpt_step_ms": 1000 * spent["gpt_step"] / max(steps, 1),
            "vocoder_rtf": spent["vocoder"] / max(stats.vocoded_audio_s - vocoded, 1e-9),
            "words_ms": 1000 * spent["words"] if "words" in spent else None,
        }
        if request.get("whole"):  # the same sentence unstreamed, as a reply's later sentences are
            began = time.perf_counter()
            async for _chunk in engine.synthesize(request["text"], voice):
                pass
            result["whole_s"] = time.perf_counter() - began
        replies.write(json.dumps({**result, "peak_rss_mb": _peak_rss_mb()}) + "\n")
    await engine.stop()


def _serve_gsv(args: argparse.Namespace) -> None:
    """gsv_tts' own unbatched `infer_stream`, loaded as our engine loads it (local BERT, CPU, fp32)."""
    import torch
    from gsv_tts.TextProcessor import get_phones_and_bert

    from tests.fixtures.full_gpt_sovits import full_voice
    from tts.gpt_sovits.process import prepare_process_for_gsv_tts

    replies = _reply_channel()
    voice = full_voice(top_k=1, noise_scale=0.0)
    gpt, sovits, ref = (str(args.models_dir / path) for path in (voice.gpt_model, voice.sovits_model, voice.ref_audio))
    began = time.perf_counter()
    gsv = prepare_process_for_gsv_tts()
    tts = gsv.TTS(
        models_dir=str(args.models_dir), device="cpu", dtype="float32", gpt_cache=[(1, 16)],
        use_bert=False, use_flash_attn=False, always_load_cnhubert=True, always_load_sv=True,
    )
    config = tts.tts_config
    config.cnroberta = gsv.CNRoberta(tts.cnroberta_path, config)  # use_bert=True would fetch an ONNX BERT
    tts.init_language_module("zh")
    tts.load_gpt_model(gpt)
    tts.load_sovits_model(sovits)
    tts.cache_prompt_audio(ref, voice.ref_text, "zh")
    tts.cache_spk_audio(ref, sovits_model=sovits)
    t2s = tts.gpt_models[gpt].t2s_model
    reference = tts.prompt_audio_cache[ref]

    def bound(text: str, tokens: int) -> None:
        """gsv_tts' GPT loop ends where its largest KV-cache bucket is full: size it to the
        prompt (reference phonemes + sentence phonemes + reference tokens) plus `tokens`."""
        phones = get_phones_and_bert(text, config, "zh")[0]
        length = len(reference["phones1"]) + len(phones) + reference["prompt"].shape[1] + tokens
        t2s.cuda_graph_buckets = {}
        t2s.initialize_runtime(config.dtype, config.device, [(1, length)])

    def speak(text: str) -> tuple[float | None, float, float]:
        began, first, audio_s = time.perf_counter(), None, 0.0
        for clip in tts.infer_stream(
            ref, ref, voice.ref_text, text, text_language="zh", prompt_language="zh", is_cut_text=False,
            top_k=voice.top_k, top_p=voice.top_p, temperature=voice.temperature,
            repetition_penalty=voice.repetition_penalty, noise_scale=voice.noise_scale,
            gpt_model=gpt, sovits_model=sovits, debug=False,
        ):
            first = first if first is not None else time.perf_counter() - began
            audio_s += len(clip.audio_data) / tts.samplerate
        return first, time.perf_counter() - began, audio_s

    with torch.inference_mode():
        bound("你好。", 25)
        speak("你好。")
    replies.write(json.dumps({"ready": True, "load_s": time.perf_counter() - began}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        with torch.inference_mode():
            bound(request["text"], int(request["tokens"]))
            first, synth_s, audio_s = speak(request["text"])
        replies.write(json.dumps({
            "first_chunk_s": first, "stream_s": synth_s, "tokens": int(request["tokens"]), "peak_rss_mb": _peak_rss_mb(),
        }) + "\n")


# -- the parent --------------------------------------------------------------------------------


@dataclass
class Row:
    """One in-process row: a child process and what it answered."""

    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PROJECT_ROOT
    log_path: Path | None = None
    ready: dict | None = None
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    _process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        try:
            log = self.log_path.open("wb") if self.log_path else asyncio.subprocess.DEVNULL
            self._process = await asyncio.create_subprocess_exec(
                *self.command, cwd=self.cwd, env={**os.environ, **self.env},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            )
            self.ready = await self._reply()
        except (OSError, RuntimeError, asyncio.TimeoutError, ValueError) as error:
            self.error = str(error)

    async def ask(self, request: dict) -> dict | None:
        if self.error or self._process is None:
            return None
        try:
            self._process.stdin.write((json.dumps(request, ensure_ascii=False) + "\n").encode())
            await self._process.stdin.drain()
            result = await self._reply()
        except (OSError, RuntimeError, asyncio.TimeoutError, ValueError) as error:
            self.error = str(error)
            return None
        self.results.append(result)
        print(f"full-voice: {self.label}: {json.dumps(result)}", file=sys.stderr, flush=True)  # progress
        return result

    async def stop(self) -> None:
        if self._process is None or self._process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 60)
        except asyncio.TimeoutError:
            self._process.kill()
            await self._process.wait()

    async def _reply(self) -> dict:
        line = await asyncio.wait_for(self._process.stdout.readline(), REPLY_TIMEOUT_S)
        if not line:
            await self._process.wait()
            raise RuntimeError(f"exited with {self._process.returncode}: {self._last_error()}")
        return json.loads(line)

    def _last_error(self) -> str:
        """The child's last log line that says what went wrong (its traceback's last line)."""
        if not self.log_path or not self.log_path.exists():
            return "no log"
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    @property
    def peak_rss_mb(self) -> float | None:
        return self.results[-1]["peak_rss_mb"] if self.results else None


def genie_row(genie_python: str | None, models_dir: Path, work: Path, workdir: Path) -> Row:
    from tests.fixtures.full_gpt_sovits import full_voice

    voice = full_voice()
    command = [
        genie_python or "", "-m", "bench.genie_anchor", "--models-dir", str(models_dir),
        "--gpt", voice.gpt_model, "--sovits", voice.sovits_model, "--ref-audio", voice.ref_audio,
        "--ref-text", voice.ref_text, "--work", str(work),
    ]
    row = Row(
        "Genie-TTS (ONNX Runtime)", command, env={"PYTHONPATH": str(PROJECT_ROOT)}, log_path=workdir / "genie.log"
    )
    if not genie_python:
        row.error = "not run: give --genie-python (a separate venv with genie-tts, torch, transformers)"
    return row


async def in_process_rows(
    profile, workdir: Path, precisions: list[str], genie_python: str | None
) -> tuple[str, list[Row]]:
    """Our rows take the sentences in turn; then each anchor, alone, makes as many tokens per
    sentence as our first row did (memory: every row holds a full-size voice, ~4 GB)."""
    from tests.fixtures.full_gpt_sovits import full_size_models

    models_dir = full_size_models()
    this = [sys.executable, "-m", "bench.full_voice"]
    ours = [
        Row(f"ours, {precision}", [*this, "ours", "--precision", precision, "--models-dir", str(models_dir)],
            log_path=workdir / f"ours-{precision}.log")
        for precision in precisions
    ]
    gsv = Row(
        "gsv_tts infer_stream, fp32", [*this, "gsv", "--models-dir", str(models_dir)], log_path=workdir / "gsv.log"
    )
    genie = genie_row(genie_python, models_dir, profile.genie_cache_dir(models_dir), workdir)
    texts = profile.sentences
    for row in ours:  # loaded one at a time: load time is not what is measured here
        await row.start()
    budgets = []
    for text in texts:
        results = [await row.ask({"text": text, "whole": profile.whole_runs}) for row in ours]
        budgets.append(next((r["tokens"] for r in results if r), None))
    for row in ours:
        await row.stop()
    for anchor in (gsv, genie):
        if anchor.error is None:
            await anchor.start()
        for text, tokens in zip(texts, budgets):
            if tokens:
                await anchor.ask({"text": text, "tokens": tokens})
        await anchor.stop()
    rows = [*ours, gsv, genie]
    return per_sentence_tables(rows, texts), rows


async def stream_app_rows(profile, workdir: Path, precisions: list[str], concurrency: list[int]) -> str:
    """N streams at once through the stream app, one server per precision, precisions in turn."""
    from bench.__main__ import table
    from bench.concurrency import CROWD_HEADER, crowd, listen
    from tests.server import running_server

    env = profile.server_env(workdir)
    body = profile.request(profile.concurrency_prompt)
    rows = []
    with contextlib.ExitStack() as stack:
        servers = []
        for precision in precisions:  # started one at a time, then all kept up so the rows alternate
            server = stack.enter_context(running_server(
                "app_stream", {**env, "CHAT2AUDIO_TTS_PRECISION": precision}, workdir / f"server-{precision}.log",
                ready_timeout_s=REPLY_TIMEOUT_S,
            ))
            listen(server.base_url, body)  # first-request costs (the voice's load) are not latency
            servers.append((precision, server))
        for n in concurrency:
            for precision, server in servers:
                result = await crowd(server.base_url, server.process.pid, body, n)
                rows.append([precision, *result.row()])
                print(f"full-voice: stream app, {precision}: {result.row()}", file=sys.stderr, flush=True)  # progress
    return table(["precision", *CROWD_HEADER], rows)


def per_sentence_tables(rows: list[Row], texts: list[str]) -> str:
    from bench.__main__ import fmt, table

    def rtf(results: list[dict], kind: str) -> str:
        done = [r for r in results if r.get(f"{kind}_s")]
        if not done:
            return "–"
        return fmt(sum(r[f"{kind}_s"] for r in done) / sum(r["tokens"] / SEMANTIC_HZ for r in done), 2)

    def p50(results: list[dict], key: str, digits: int = 3) -> str:
        values = [r[key] for r in results if r.get(key) is not None]
        return fmt(statistics.median(values), digits) if values else "–"

    lines = []
    for index, text in enumerate(texts):
        for row in rows:
            if index < len(row.results):
                r = row.results[index]
                speech = f"{r['tokens']} ({fmt(r['tokens'] / SEMANTIC_HZ, 2)} s)"
                lines.append([
                    f"{index + 1} ({len(text)} chars)", row.label, speech,
                    fmt(r["first_chunk_s"]), rtf([r], "stream"), rtf([r], "whole"), fmt(r.get("gpt_step_ms"), 1),
                    fmt(r.get("vocoder_rtf"), 2), fmt(r.get("text_s")), fmt(r.get("gpt_prompt_s")),
                    fmt(r.get("words_ms"), 1),
                ])
    summary = []
    for row in rows:
        if not row.results:
            summary.append([row.label, row.error or "no result", *[""] * 9])
            continue
        rs = row.results
        summary.append([
            row.label, p50(rs, "first_chunk_s"), rtf(rs, "stream"), rtf(rs, "whole"), p50(rs, "gpt_step_ms", 1),
            p50(rs, "vocoder_rtf", 2), p50(rs, "text_s"), p50(rs, "gpt_prompt_s"), p50(rs, "words_ms", 1),
            fmt(row.ready.get("load_s"), 1) if row.ready else "–", f"{row.peak_rss_mb:.0f}",
        ])
    return (
        table(["sentence", "row", "tokens (audio)", "first chunk (s)", "RTF streamed", "RTF whole", "GPT ms/step",
               "vocoder RTF", "text+BERT (s)", "GPT prompt (s)", "words (ms)"], lines)
        + "\n\n"
        + table(["row", "first chunk p50 (s)", "RTF streamed", "RTF whole", "GPT ms/step p50", "vocoder RTF p50",
                 "text+BERT p50 (s)", "GPT prompt p50 (s)", "words p50 (ms)", "load (s)", "peak RSS (MB)"], summary)
    )


async def run_full_voice(
    profile, workdir: Path, *, precisions: list[str], concurrency: list[int], genie_python: str | None,
    emit: Callable[[str], None] = lambda part: None,
) -> str:
    """The profile's section: per sentence in-process (ours per precision, then the anchors), then
    N concurrent streams through the stream app. Each part is also handed to `emit` once measured,
    so a run cut short still shows what it measured."""

    parts = []

    def part(text: str) -> None:
        parts.append(text)
        emit(text)

    load_before = os.getloadavg()[0]
    part(
        f"## {profile.title}\n\n"
        f"A random GPT never emits EOS, so every sentence runs to its budget: {MIN_TOKENS} + {TOKENS_PER_PHONE:g} GPT "
        f"tokens per phoneme (25 tokens = 1 s of speech), in-process and in the server (`{BUDGET_SETTING}`). gsv_tts and "
        "Genie make exactly as many tokens per sentence as our first row did: gsv_tts' loop ends where its KV-cache "
        "bucket is full, so the bucket is sized to the prompt plus that many tokens; Genie's stage decoder (its own loop "
        "runs to 500 tokens) is stepped that many times over its ONNX sessions. Greedy (top_k = 1), noiseless vocoder; "
        f"CPU, {os.cpu_count()} cores; load average (1 min) {load_before:.1f} at the start.\n"
    )
    per_sentence, rows = await in_process_rows(profile, workdir, precisions, genie_python)
    ready = next((row.ready for row in rows if row.ready and "precision" in row.ready), {})
    resolved = ", ".join(
        f"{row.label.removeprefix('ours, ')} → {row.ready['precision']}"
        for row in rows if row.ready and "precision" in row.ready
    )
    ends = ready.get("chunk_ends") or []
    chunking = f"streamed chunks ending at tokens {', '.join(map(str, ends))}, …"
    errors = "".join(f"\n- {row.label}: {row.error}" for row in rows if row.error)
    part(
        "### Per sentence, in-process (our precisions alternating; then each anchor alone)\n\n"
        f"Ours: {chunking}; precision setting → what the engine chose: {resolved or 'none ran'}.{errors}\n\n"
        f"{per_sentence}\n\n"
        "First chunk: the first audio of a streamed sentence (Genie does not stream inside a sentence: its whole "
        "sentence). RTF = synthesis s of the whole sentence / its speech (tokens / 25 s; the pause each engine appends "
        "is not counted), streamed (as the first sentence of a reply is; Genie: none) and whole (unstreamed, as the "
        "later ones are; ours only with FullVoiceProfile.whole_runs). GPT ms/step, vocoder RTF (vocoder s / audio s), "
        "text+BERT (g2p and BERT features), GPT prompt (the prompt's prefill) and words (aligning its characters to "
        "its audio: word timings, every chunk re-aligning the sentence so far; ours only) are each engine's own stage "
        "timings over the sentence (ours: EngineStats, streamed); peak RSS is each row's own process.\n\n"
        f"{ratio_table(rows)}\n"
    )
    streams = await stream_app_rows(profile, workdir, precisions, concurrency)
    part(
        "### Concurrent streams (stream app, scripted LLM)\n\n"
        f"{streams}\n\n"
        f"Each stream says: {profile.concurrency_prompt}. Each listener starts playing at its first audio byte, in real "
        f"time; an underrun is a moment it had nothing to play before its reply ended. Load average (1 min) at the end: "
        f"{os.getloadavg()[0]:.1f}.\n"
    )
    return "\n".join(parts)


def ratio_table(rows: list[Row]) -> str:
    """Every row against the first (ours at the first precision), from this run."""
    from bench.__main__ import fmt, table

    def totals(row: Row, kind: str) -> float | None:
        done = [r for r in row.results if r.get(f"{kind}_s")]
        return sum(r[f"{kind}_s"] for r in done) / sum(r["tokens"] / SEMANTIC_HZ for r in done) if done else None

    def first_chunk(row: Row) -> float | None:
        return statistics.median(r["first_chunk_s"] for r in row.results) if row.results else None

    def ratio(a: float | None, b: float | None) -> str:
        return fmt(a / b, 2) if a and b else "–"

    def rtf(row: Row) -> float | None:  # as the row speaks a reply's first sentence: streamed where it can
        return totals(row, "stream") or totals(row, "whole")

    base = rows[0]
    lines = [
        [row.label, ratio(first_chunk(row), first_chunk(base)), ratio(rtf(row), rtf(base))]
        for row in rows[1:] if row.results
    ]
    if not lines:
        return ""
    header = [f"ratio to {base.label} (< 1: faster)", "first chunk p50", "RTF (streamed; Genie: whole)"]
    return table(header, lines)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["ours", "gsv"])
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    if args.kind == "ours":
        asyncio.run(_serve_ours(args))
    else:
        _serve_gsv(args)


if __name__ == "__main__":
    _main()
