"""The tiny Qwen2 fixture loads like the real Qwen2.5-7B directory, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.tiny_qwen2 import DEFAULT_SYSTEM, build_tiny_qwen2

# Read by huggingface_hub at import time; local directories never need the hub anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()


def test_directory_layout(model_dir: Path, tokenizer: Any) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "vocab.json", "merges.txt"} <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    assert config["vocab_size"] >= len(tokenizer) and config["vocab_size"] % 128 == 0
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.eos_token_id, tokenizer.pad_token_id]


def test_tokenizer(tokenizer: Any) -> None:
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>",
                                                        "<|im_end|>")]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]  # after the learned vocabulary, as in Qwen
    for text in ["Hello, Nahida! 你好，很高兴见到你。", "ü€😀 tabs\tand\n\nnewlines", "Здравствуй"]:
        encoded = tokenizer(text)["input_ids"]
        assert tokenizer.decode(encoded) == text  # byte-level: nothing is unknown
    assert tokenizer("<|im_start|>user")["input_ids"][0] == ids[1]
    assert tokenizer.decode([ids[2], ids[0]], skip_special_tokens=True) == ""


def test_chat_template(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You are Nahida."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, traveler."},
        {"role": "user", "content": "你好"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Nahida.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello, traveler.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    default = tokenizer.apply_chat_template(messages[1:2], tokenize=False)
    assert default == (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
                       "<|im_start|>user\nHi!<|im_end|>\n")


def test_generate(tokenizer: Any, model: Any) -> None:
    import torch

    messages = [{"role": "system", "content": "You are Nahida."},
                {"role": "user", "content": "Tell me a story."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    prompt_len = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, prompt_len:]
    assert len(new) == 8
    assert isinstance(tokenizer.decode(new, skip_special_tokens=True), str)


def test_sharded_and_seeded(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    a = build_tiny_qwen2(tmp_path / "a", seed=1, max_shard_size="100KB")
    b = build_tiny_qwen2(tmp_path / "b", seed=1)
    c = build_tiny_qwen2(tmp_path / "c", seed=2)
    assert (a / "model.safetensors.index.json").exists() and not (a / "model.safetensors").exists()
    sharded = AutoModelForCausalLM.from_pretrained(a, local_files_only=True)
    weights_b, weights_c = load_file(b / "model.safetensors"), load_file(c / "model.safetensors")
    key = "model.embed_tokens.weight"
    assert sharded.state_dict()[key].equal(weights_b[key])
    assert not weights_b[key].equal(weights_c[key])
