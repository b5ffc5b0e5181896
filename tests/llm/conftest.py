"""What the transformers-backend tests share: the tiny Qwen2 model dir, and a started backend on it."""

from __future__ import annotations

import pytest

from llm.transformers_backend import TransformersBackend
from tests.fixtures.tiny_qwen2 import build_tiny_qwen2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


async def started(model_dir, tmp_path, max_batch: int) -> TransformersBackend:
    backend = TransformersBackend(model_source=model_dir, cache_dir=tmp_path, device="cpu", max_batch=max_batch)
    await backend.start()
    return backend
