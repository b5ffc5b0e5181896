"""Fitting a conversation into the model's context window: the oldest exchanges go first.

Without this a session grows until prompt + reply no longer fit, and from then on every turn of
that conversation fails upstream (vLLM answers 400 → 502 here) until the session expires.
"""

from __future__ import annotations

from collections.abc import Callable

from chat2audio.errors import InvalidInput
from chat2audio.runtime.text import is_cjk
from llm.base import ChatMessage

TokenCounter = Callable[[list[ChatMessage]], int]
PER_MESSAGE_TOKENS = 8  # role markers and separators of a chat template


def estimate_tokens(messages: list[ChatMessage]) -> int:
    """An upper estimate for models whose tokenizer is not at hand (remote backends): a CJK
    character is at most one token, other text at most one per three characters."""
    total = 0
    for message in messages:
        cjk = sum(1 for ch in message.content if is_cjk(ch))
        total += PER_MESSAGE_TOKENS + cjk + -(-(len(message.content) - cjk) // 3)
    return total


def fit_history(
    system: list[ChatMessage],
    history: list[ChatMessage],
    user: ChatMessage,
    *,
    budget: int | None,
    count_tokens: TokenCounter = estimate_tokens,
) -> list[ChatMessage]:
    """`system + history + user`, dropping the oldest exchanges until it fits `budget` tokens.

    Raises InvalidInput when even the system prompt and the new input alone do not fit.
    """
    if budget is None:
        return [*system, *history, user]
    kept = list(history)
    while True:
        messages = [*system, *kept, user]
        if count_tokens(messages) <= budget:
            return messages
        if not kept:
            raise InvalidInput(
                f"the input is too long for the model's context ({budget} tokens for prompt and input); shorten it"
            )
        del kept[:2]  # one user + assistant exchange
