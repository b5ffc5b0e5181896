"""A deterministic LLM of known speed for tests and benchmarks: it replies with the user's own
last message, one word-sized token every `token_delay_s`, up to a stop string if one is given.
No model, no randomness (a seed changes nothing)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from llm.base import ChatMessage, GenerationOptions, TextPiece
from llm.stops import StopStrings

_TOKEN = re.compile(r"\s*[^\s]{1,4}|\s+")


class ScriptedLLM:
    name = "scripted"

    def __init__(self, *, token_delay_s: float = 0.02, first_token_delay_s: float | None = None) -> None:
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = token_delay_s if first_token_delay_s is None else first_token_delay_s
        self.active_generations = 0
        self.tokens_generated = 0

    async def start(self) -> None:
        pass

    def describe(self) -> str:
        return "scripted (test replies, no model)"

    async def stop(self) -> None:
        pass

    async def stream_chat(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        script = next((m.content for m in reversed(messages) if m.role == "user"), "")
        tokens = _TOKEN.findall(script)
        cut = len(tokens) > options.max_new_tokens
        tokens = tokens[: options.max_new_tokens]
        self.active_generations += 1
        stops, text, sent = StopStrings(options.stop), "", 0
        try:
            for position, token in enumerate(tokens):
                await asyncio.sleep(self.first_token_delay_s if position == 0 else self.token_delay_s)
                self.tokens_generated += 1
                text += token
                end = stops.releasable(text, sent)
                if end > sent:
                    yield TextPiece(text[sent:end])
                    sent = end
                if stops.stopped:
                    break
            if not stops.stopped and len(text) > sent:  # a tail that only looked like a stop string
                yield TextPiece(text[sent:])
            yield TextPiece("", finish_reason="length" if cut and not stops.stopped else "stop")
        finally:
            self.active_generations -= 1
