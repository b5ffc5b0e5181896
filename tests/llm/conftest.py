"""What the transformers-backend tests share: the tiny Qwen2 model dir, and a started backend on it."""

from __future__ import annotations

import pytest

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
