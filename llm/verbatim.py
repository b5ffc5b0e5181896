"""The "LLM" of speech requests (`POST /v1/audio/speech`, GPT-SoVITS's `/tts`): it says exactly
the text it was given, so that text goes through the same splitter → TTS stages as a reply."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llm.base import ChatMessage, GenerationOptions, TextPiece


class VerbatimText:
    """A `ReplyWriter`, made per request: nothing to start or stop."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream_chat(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        yield TextPiece(self.text, finish_reason="stop")
