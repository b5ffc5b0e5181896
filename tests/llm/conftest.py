"""What the transformers-backend tests share: the tiny Qwen2 model dir, a started backend on it,
and Hugging Face's own `generate()` on it as the reference for greedy replies."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm.base import ChatMessage, GenerationOptions
from llm.transformers_backend import TransformersBackend
from tests.fixtures.tiny_qwen2 import build_tiny_qwen2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


async def started(model_dir, tmp_path, max_batch: int, precision: str = "fp32") -> TransformersBackend:
    """fp32 unless asked: these tests compare replies token for token across batches. int8 decode
    weights compute in bf16, where a row's left padding (its batch companions' lengths) can move a
    value across a rounding step and flip a near-tie of this random model's logits
    (tests/llm/test_precision.py bounds what int8 changes)."""
    backend = TransformersBackend(
        model_source=model_dir, cache_dir=tmp_path, device="cpu", max_batch=max_batch, precision=precision
    )
    await backend.start()
    return backend


HFReply = Callable[[list[ChatMessage], GenerationOptions], tuple[str, str]]


@pytest.fixture(scope="module")
def hf_greedy(model_dir) -> HFReply:
    """A greedy reply as (text, finish reason) from transformers' own `generate(do_sample=False)`
    on a copy of the model loaded here: an implementation independent of the batcher's."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos_ids = set(model.generation_config.eos_token_id)

    def reply(messages: list[ChatMessage], options: GenerationOptions) -> tuple[str, str]:
        assert options.temperature == 0.0 and not options.stop, "the reference is greedy, without stop strings"
        chat = [{"role": m.role, "content": m.content} for m in messages]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(
                **prompt, do_sample=False, max_new_tokens=options.max_new_tokens,
                repetition_penalty=options.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
            )
        tokens = output[0, prompt["input_ids"].shape[1]:].tolist()
        ended = bool(tokens) and tokens[-1] in eos_ids
        # The stream holds back bytes that do not make a whole character yet, so a reply cut at
        # its limit ends before them (decode() shows them as U+FFFD).
        text = tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
        return text, "stop" if ended else "length"

    return reply
