"""The LLM and GPT-SoVITS computing at once in one process, as the service runs them, per thread policy.

    python -m bench.torch_threads

The embedded LLM (SmolLM2-135M, continuous batching) writes replies while the full-size GPT-SoVITS
voice (CHAT2AUDIO_TTS_PRECISION=auto) speaks sentences, on the same cores. Each engine computes on
its own thread with its own intra-op (OpenMP) pool; the policies compared:
- `2 + 2`: each pool sized to every core, torch's default (both at once = twice the cores);
- `1 + 1`: each pinned to one core (CHAT2AUDIO_TORCH_THREADS=1);
- `shared`: every core to whichever computes alone, an equal share while both compute (the default).
Reported per policy: the voice's real-time factor and GPT step alone and under the LLM's load, and
the LLM's tokens/s alone and while the voice speaks. A random GPT never says EOS: 3 tokens per phoneme.
Then the LLM's tokens/s beside the voice loaded and idle, its worker thread kept alive or ended.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

from chat2audio.runtime.cores import CoreShare
from chat2audio.settings import Settings
from llm.base import ChatMessage, GenerationOptions
from tests.fixtures.full_gpt_sovits import full_size_models, full_voice
from tts.base import audio_of
from tts.gpt_sovits import SAMPLE_RATE, GPTSoVITSEngine

SENTENCES = (
    "你好，很高兴认识你。",
    "今天的风好舒服呀，我们去看看花吧！",
    "这是只存在于理论中的举动，我甚至不确定有谁敢做这样的事。",
)
POLICIES = {"2 + 2": 2, "1 + 1": 1, "shared": None}
LLM_OPTIONS = GenerationOptions(max_new_tokens=400, temperature=0.0)


async def speak(engine: GPTSoVITSEngine, voice) -> tuple[float, float]:
    """Real-time factor and GPT ms per step over the sentences."""
    stats = engine.stats
    steps_s, steps = stats.stage_seconds["gpt_step"], stats.stage_calls["gpt_step"]
    began, samples = time.perf_counter(), 0
    for text in SENTENCES:
        async for chunk in audio_of(engine.synthesize(text, voice, streaming=True)):
            samples += chunk.size
    rtf = (time.perf_counter() - began) / (samples / SAMPLE_RATE)
    step_ms = 1000 * (stats.stage_seconds["gpt_step"] - steps_s) / max(1, stats.stage_calls["gpt_step"] - steps)
    return rtf, step_ms


async def write(llm, replies: int, until: asyncio.Event | None = None) -> float:
    """Tokens/s of `replies` concurrent replies (restarted until `until` is set, if given)."""
    tokens, began = 0, time.perf_counter()

    async def one() -> None:
        nonlocal tokens
        while True:
            async for _ in llm.stream_chat([ChatMessage("user", "Tell me a long story about the sea.")], LLM_OPTIONS):
                tokens += 1
                if until is not None and until.is_set():
                    return
            if until is None:
                return

    await asyncio.gather(*(one() for _ in range(replies)))
    return tokens / (time.perf_counter() - began)  # text pieces ≈ tokens


async def measure(replies: int) -> tuple[list[list[str]], list[list[str]]]:
    from llm.embedded import embedded_gguf_path
    from llm.transformers_backend import TransformersBackend

    share, settings = CoreShare(), Settings()
    llm = TransformersBackend(
        model_source=embedded_gguf_path(), cache_dir=settings.cache_dir, device="cpu", max_batch=replies, cores=share
    )
    tts = GPTSoVITSEngine(
        models_dir=full_size_models(), device="cpu", precision="auto", min_tokens=10, tokens_per_phone=3.0, cores=share
    )
    await llm.start()
    await tts.start()
    voice = full_voice()
    await speak(tts, voice)  # loads the voice
    rows = []
    for label, fixed in POLICIES.items():
        share.fixed = fixed
        rtf_alone, step_alone = await speak(tts, voice)
        llm_alone = await write(llm, replies)
        done = asyncio.Event()
        background = asyncio.create_task(write(llm, replies, until=done))
        await asyncio.sleep(1.0)  # the LLM is decoding
        rtf_loaded, step_loaded = await speak(tts, voice)
        done.set()
        llm_loaded = await background
        rows.append([
            label, f"{rtf_alone:.2f}", f"{rtf_loaded:.2f}", f"{step_alone:.1f}", f"{step_loaded:.1f}",
            f"{llm_alone:.1f}", f"{llm_loaded:.1f}",
        ])
    share.fixed = None
    idle_rows = [await llm_beside_an_idle_voice(llm, tts, voice, replies) for _ in range(3)]
    await tts.stop()
    await llm.stop()
    return rows, idle_rows


async def llm_beside_an_idle_voice(llm, tts: GPTSoVITSEngine, voice, replies: int) -> list[str]:
    """LLM tokens/s while the voice is loaded and idle: its worker thread kept alive (a job that
    waits holds it, as an idle worker thread did before it ended when idle), then ended."""
    held = threading.Event()
    await speak(tts, voice)
    tts._worker.submit(held.wait)
    await asyncio.sleep(0.3)
    alive = await write(llm, replies)
    held.set()
    await speak(tts, voice)
    await asyncio.sleep(0.3)  # its last job done, the worker thread ends
    ended = await write(llm, replies)
    return [f"{alive:.1f}", f"{ended:.1f}", f"{ended / alive:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=4, help="LLM replies decoding together")
    args = parser.parse_args()
    rows, idle_rows = asyncio.run(measure(args.replies))
    print(f"LLM: embedded SmolLM2-135M, {args.replies} replies at once · TTS: full-size voice, precision auto\n")
    print("| threads (LLM + TTS) | TTS RTF alone | TTS RTF with LLM | GPT step ms alone | GPT step ms with LLM "
          "| LLM tokens/s alone | LLM tokens/s with TTS |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nThe LLM alone beside the loaded, idle voice (default policy), three times:\n")
    print("| LLM tokens/s, voice's worker thread alive | LLM tokens/s, ended (now) | ratio |")
    print("| --- | --- | --- |")
    for row in idle_rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
