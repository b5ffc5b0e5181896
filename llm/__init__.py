"""LLM backends, one module each behind one small interface (`llm.base.LLMBackend`); which name
means which backend is decided in `chat2audio.wiring`."""

from llm.base import ChatMessage, GenerationOptions, LLMBackend, LLMError, TextPiece

__all__ = ["ChatMessage", "GenerationOptions", "LLMBackend", "LLMError", "TextPiece"]
