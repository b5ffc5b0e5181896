"""LLM backends, selected by `CHAT2AUDIO_LLM_BACKEND`; one module each, imported on demand."""

from __future__ import annotations

import importlib

from chat2audio.settings import Settings
from llm.base import ChatMessage, GenerationOptions, LLMBackend, LLMError, TextPiece

BACKENDS: dict[str, str] = {
    "transformers": "llm.transformers_backend",
    "openai": "llm.openai_backend",
    "scripted": "llm.scripted",
}


def create_backend(settings: Settings) -> LLMBackend:
    """Build (not start) the configured backend; each module exposes `create(settings)`."""
    return importlib.import_module(BACKENDS[settings.llm_backend]).create(settings)


__all__ = ["BACKENDS", "ChatMessage", "GenerationOptions", "LLMBackend", "LLMError", "TextPiece", "create_backend"]
