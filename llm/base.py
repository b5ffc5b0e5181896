"""The one interface every LLM backend implements: chat messages in, text pieces out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from chat2audio.runtime.errors import EngineError

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings for one reply; backends ignore what they cannot honour."""

    max_new_tokens: int = 160
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    # The reply's own random numbers: a seeded reply is the same whatever runs beside it.
    seed: int | None = None
    # The reply ends (finish_reason "stop") where its text would contain one of these; neither
    # the stop string nor anything after it is sent.
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextPiece:
    """A piece of the reply as generated. The last piece carries why generation ended."""

    text: str
    finish_reason: FinishReason | None = None


class LLMError(EngineError):
    """The backend could not produce a reply; `status` is the HTTP status to report."""

    kind = "LLM"
    default_status = 502


class ReplyWriter(Protocol):
    """All a reply's pipeline needs of an LLM: the reply to `messages`, as an async stream of
    text pieces. Closing the iterator early (client gone) must stop the generation work promptly."""

    def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[TextPiece]: ...


@runtime_checkable
class LLMBackend(ReplyWriter, Protocol):
    """A reply writer the service starts and stops: a model in this process, or a server's client."""

    name: str

    async def start(self) -> None:
        """Load models or open clients; called once from the app's lifespan."""

    async def stop(self) -> None:
        """Release what `start` acquired."""

    def describe(self) -> str:
        """One line for the start-up summary: which model, where."""


@runtime_checkable
class CountsTokens(Protocol):
    """Optional backend capability: its context window and a prompt's length in its tokens, so
    that a conversation's history is trimmed to fit. Blocking: `count_tokens` runs off the loop."""

    context_tokens: int | None

    @property
    def counts_exactly(self) -> bool:
        """False where `count_tokens` is only an upper bound (no tokenizer at hand)."""
        ...

    def count_tokens(self, messages: list[ChatMessage]) -> int: ...


@runtime_checkable
class CountsGenerations(Protocol):
    """Optional backend capability: what /stats and /metrics report of the LLM."""

    @property
    def active_generations(self) -> int:
        """Replies generating now (or waiting to)."""
        ...

    @property
    def tokens_generated(self) -> int:
        """A counter since start-up."""
        ...


def chat_template_ids(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    """The prompt's token ids under `tokenizer`'s chat template, ready for the reply to follow
    (transformers returns a list or, in newer versions, a mapping with `input_ids`)."""
    ids = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
