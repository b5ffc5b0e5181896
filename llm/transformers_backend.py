"""In-process LLM through transformers: any causal-LM directory (Qwen2.5-7B, InternLM2, …) or a
`.gguf` file, with the model's own chat template, streamed token by token by the continuous
batcher (`llm.batching`), which runs every reply.

On a CPU that computes bf16 natively, `precision="auto"` holds the linear layers' weights as int8
for decode steps (and bf16 for prompts; `chat2audio.runtime.int8_weights`): a decode step reads
every weight once, so it takes ~2.5 times less time (SmolLM2-135M, 1-4 replies, 2 cores), and the
embedded model's weights are 4-bit to begin with. tests/llm/test_precision.py bounds what it changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chat2audio.runtime.cores import CoreShare
from chat2audio.runtime.devices import resolve_device
from chat2audio.runtime.int8_weights import cpu_supports_bf16, int8_decode_linear_class, replace_linear_layers
from llm.base import ChatMessage, GenerationOptions, LLMError, TextPiece, chat_template_ids
from llm.batching import ContinuousBatcher
from llm.embedded import EMBEDDED_PACKAGE

log = logging.getLogger(__name__)


class TransformersBackend:
    """One model in this process; up to `max_batch` concurrent replies share decode steps
    (`llm.batching`), and 1 runs them one at a time."""

    name = "transformers"

    def __init__(
        self, *, model_source: Path, cache_dir: Path, device: str = "auto", trust_remote_code: bool = False,
        max_batch: int = 1, cores: CoreShare | None = None, precision: str = "auto",
    ) -> None:
        """`precision`: "auto" (int8 decode weights on a CPU with native bf16, else as loaded),
        "fp32" (as loaded: float32 on a CPU, bf16/fp16 on CUDA) or "int8" (a CPU with native bf16)."""
        self.model_source = model_source
        self._cache_dir = cache_dir
        self._requested_device = device
        self._trust_remote_code = trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None
        self.device = "cpu"
        self.load_seconds: float | None = None
        # Loads the model, then ends (see `start`); the batcher runs the replies on its own thread.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-load")
        self.max_batch = max_batch
        self._batcher: ContinuousBatcher | None = None
        self._cores = cores
        self._precision_setting = precision
        self.precision = "fp32"
        self.context_tokens: int | None = None
        self._counting_tokenizer: Any = None

    counts_exactly = True  # the model's own tokenizer

    @property
    def active_generations(self) -> int:
        """Replies generating or waiting to (observable by tests and /stats)."""
        return self._batcher.active if self._batcher else 0

    @property
    def tokens_generated(self) -> int:
        """A counter since start-up, for /stats and benchmarks."""
        return self._batcher.tokens_generated if self._batcher else 0

    async def start(self) -> None:
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)
        self._batcher = ContinuousBatcher(
            self._model, self._tokenizer, self.device, max_batch=self.max_batch,
            eos_ids=_eos_ids(self._model, self._tokenizer), cores=self._cores,
        )
        # The first reply pays one-off set-up costs: pay them here, on the batch thread. Then let
        # the loading thread go: every thread that ran torch on CPU keeps its own pool of OpenMP
        # workers, and an idle pool beyond the cores made each batched step ~30% slower
        # (66 → 94 ms for SmolLM2-135M, batch 8, 2 cores).
        async for _ in self._batcher.stream([ChatMessage("user", "Hi")], _WARM_UP):
            pass
        await asyncio.to_thread(self._worker.shutdown, wait=True)
        self.load_seconds = time.perf_counter() - started
        log.debug("LLM %s loaded on %s in %.1f s (batch %d)", self.model_source, self.device, self.load_seconds, self.max_batch)

    def describe(self) -> str:
        name = self.model_source.stem if self.model_source.is_file() else self.model_source.name
        embedded = " (embedded)" if self.model_source.suffix == ".gguf" and EMBEDDED_PACKAGE in self.model_source.parts else ""
        precision = " · int8 decode weights" if self.precision == "int8" else ""
        return (f"transformers · {name}{embedded} on {self.device}{precision} · "
                f"up to {self.max_batch} replies decoding together")

    async def stop(self) -> None:
        # Waiting for a generation in progress must not block the event loop during shutdown.
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.close)
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)
        self._model = None
        self._tokenizer = None

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        """Prompt length in tokens under the model's chat template (for fitting the context).

        A tokenizer of its own: a fast tokenizer used from two threads at once can fail
        ("Already borrowed"), and the generation thread uses the other one."""
        return len(chat_template_ids(self._counting_tokenizer, messages))

    def stream_chat(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        if self._model is None or self._batcher is None:  # not started, or stopped
            raise LLMError("LLM not loaded", status=503)
        return self._batcher.stream(messages, options)

    # -- loading thread only ---------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        if not log.isEnabledFor(logging.DEBUG):
            transformers_logging.disable_progress_bar()  # a start-up is a summary, not progress bars

        self.device = resolve_device(self._requested_device)
        if self.device == "cpu":
            # Prompt passes of grouped-query models (Qwen2.5, SmolLM2) then hand SDPA the shared
            # key/value heads instead of copying them per query head: 4k tokens into a long
            # prompt, an 8-token pass took 180 instead of 240 ms (SmolLM2-135M, 2 cores).
            # transformers turns it on by itself only for XPU and MPS, or without a mask.
            os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        dtype = torch.float32
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model_dir = self._prepare_model_dir()
        common = {"trust_remote_code": self._trust_remote_code}
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir, **common)
        self._counting_tokenizer = AutoTokenizer.from_pretrained(model_dir, **common)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **common)
        self._model = model.to(self.device).eval()
        self.precision = _weights_precision(self._precision_setting, self.device)
        if self.precision == "int8":
            _int8_decode_weights(self._model)
        self.context_tokens = getattr(model.config, "max_position_embeddings", None)
        if not self._tokenizer.chat_template:
            raise LLMError(f"{self.model_source} has no chat template", status=503)

    def _prepare_model_dir(self) -> Path:
        source = self.model_source
        if not source.exists():
            raise LLMError(f"LLM model not found: {source}", status=503)
        if source.suffix != ".gguf":
            return source
        return self._converted_gguf(source)

    def _converted_gguf(self, gguf: Path) -> Path:
        """GGUF parsing is slow pure Python (~30 s for 135M): convert once, reuse the HF copy."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        stat = gguf.stat()
        key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = self._cache_dir / "gguf" / f"{gguf.stem}-{key}"
        if (target / "config.json").exists():
            return target
        log.info("converting %s to a transformers model in %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Dequantized to a dense model: GGUF-block models cannot be saved, and on CPU the
        # dense 135M model is both small and fast.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        tokenizer.save_pretrained(partial)
        model.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(partial, ignore_errors=True)
        return target


_WARM_UP = GenerationOptions(max_new_tokens=2, temperature=0)


def _weights_precision(setting: str, device: str) -> str:
    """What `setting` means on `device`: "int8" or "fp32" (the weights as loaded)."""
    if setting not in ("auto", "fp32", "int8"):
        raise LLMError(f"unknown LLM precision {setting!r}; one of auto, fp32, int8", status=503)
    if setting == "int8" and device != "cpu":
        raise LLMError("int8 LLM weights are for CPUs; on a GPU use auto", status=503)
    if setting == "int8" and not cpu_supports_bf16():
        raise LLMError("int8 LLM weights compute in bf16, which this CPU lacks (AVX512-BF16 or AMX)", status=503)
    return "int8" if setting != "fp32" and device == "cpu" and cpu_supports_bf16() else "fp32"


def _int8_decode_weights(model: Any) -> None:
    """Every linear layer of the decoder and the output layer, in place. The input embeddings stay
    float32 (a lookup reads one row per token), also where the output layer shares their weights."""
    convert = int8_decode_linear_class().from_linear
    replace_linear_layers(model.get_decoder(), convert)
    output = model.get_output_embeddings()
    if output is not None:
        model.set_output_embeddings(convert(output))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
