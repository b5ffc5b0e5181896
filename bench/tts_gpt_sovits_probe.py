"""Probe the gpt-sovits engine once: load time, first streamed chunk, real-time factor.

    python -m bench.tts_gpt_sovits_probe                      # tiny random voice built in a temp dir
    python -m bench.tts_gpt_sovits_probe --models-dir models --voice-toml speakers/Nahida.toml

A random GPT never stops by itself, so on the tiny voice every sentence runs to the engine's
token budget (`--tokens-per-phone`); the RTF is per second of audio produced either way.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from chat2audio.settings import PROJECT_ROOT
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, build_tiny_gpt_sovits_models, tiny_voice
from tts.base import audio_of
from tts.gpt_sovits import SAMPLE_RATE, GPTSoVITSEngine, GPTSoVITSVoice


async def probe(engine: GPTSoVITSEngine, voice: GPTSoVITSVoice, texts: list[str], repeats: int) -> dict[str, float]:
    began = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - began

    began = time.perf_counter()
    async for _ in engine.synthesize(texts[0], voice):  # loads the voice's weights and reference features
        pass
    first_sentence_s = time.perf_counter() - began

    first_chunk, whole, audio_s, chunks = [], [], [], []
    for _ in range(repeats):
        for text in texts:
            began, first, count = time.perf_counter(), None, 0
            async for _chunk in audio_of(engine.synthesize(text, voice, streaming=True)):
                first = first if first is not None else time.perf_counter() - began
                count += 1
            first_chunk.append(first)
            chunks.append(count)
            began, samples = time.perf_counter(), 0
            async for chunk in audio_of(engine.synthesize(text, voice)):
                samples += chunk.size
            whole.append(time.perf_counter() - began)
            audio_s.append(samples / SAMPLE_RATE)
    await engine.stop()
    return {
        "engine start (import + base models), s": start_s,
        **{f"  of which {name}, s": seconds for name, seconds in engine.stats.loaded.items()},
        "first sentence incl. voice load, s": first_sentence_s,
        "first streamed chunk, median s": statistics.median(first_chunk),
        "chunks per streamed sentence, median": statistics.median(chunks),
        "whole sentence, median s": statistics.median(whole),
        "audio per sentence, median s": statistics.median(audio_s),
        "real-time factor (whole sentence)": sum(whole) / sum(audio_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="a real models dir (default: build a tiny one)")
    parser.add_argument("--voice-toml", type=Path, help="speaker file whose [voice] to use (with --models-dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens-per-phone", type=float, default=3.0, help="GPT budget per phoneme (tiny voice)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gsv-probe-") as scratch:
        if args.models_dir is None:
            # Built in a child process, so that the engine's start below pays the real import cost.
            models_dir = Path(scratch)
            build = f"from {build_tiny_gpt_sovits_models.__module__} import build_tiny_gpt_sovits_models as b; "
            build += f"b({str(models_dir)!r}, seed=7, speaker_names=('TinyA',))"
            subprocess.run([sys.executable, "-c", build], cwd=PROJECT_ROOT, check=True, capture_output=True)
            voice, options = tiny_voice("TinyA"), {"min_tokens": 10, "tokens_per_phone": args.tokens_per_phone}
        else:
            models_dir, options = args.models_dir, {}
            table = tomllib.loads(args.voice_toml.read_text(encoding="utf-8"))["voice"]
            voice = GPTSoVITSVoice.model_validate(table)
        engine = GPTSoVITSEngine(models_dir=models_dir, device=args.device, **options)
        results = asyncio.run(probe(engine, voice, list(SPOKEN_TEXTS), args.repeats))
    print(f"device: {engine.device}")
    print("| measure | value |\n| --- | --- |")
    for name, value in results.items():
        print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
