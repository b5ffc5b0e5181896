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
MAX_CORRECTIONS = 4  # exact re-counts after the running sum, each dropping what it was off by


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
    exact: bool = True,
) -> list[ChatMessage]:
    """`system + history + user`, dropping the oldest exchanges until it fits `budget` tokens.

    Each history message is counted once, alone, and the oldest exchanges are dropped from a
    running sum: re-rendering the whole conversation after every dropped exchange made a long
    client-kept chat (1,700 messages) quadratic. A few exact counts of the result then correct
    what the per-message sum missed (a template's joins), each a render of what fits, not more.
    Blocking (a tokenizer): run it off the event loop. Raises InvalidInput when even the system
    prompt and the new input alone do not fit; where `count_tokens` is only an upper bound
    (`exact` False: a remote model whose tokenizer is not at hand) they are sent without history
    instead, and the server, which counts exactly, has the last word.
    """
    if budget is None:
        return [*system, *history, user]
    fixed = count_tokens([*system, user])
    if fixed > budget and not exact:
        return [*system, user]
    if fixed > budget:
        raise InvalidInput(
            f"the input is too long for the model's context ({budget} tokens for prompt and input); shorten it"
        )
    costs = _message_costs(history, count_tokens)
    room = budget - fixed
    start = 0
    for _ in range(MAX_CORRECTIONS):
        start = _first_kept(costs, start, room)
        messages = [*system, *history[start:], user]
        over = count_tokens(messages) - budget
        if over <= 0:
            return messages
        room -= over
    while start < len(history):  # estimates far off: one exchange at a time, as a last resort
        start += 2
        messages = [*system, *history[start:], user]
        if count_tokens(messages) <= budget:
            return messages
    return [*system, user]


def _message_costs(history: list[ChatMessage], count_tokens: TokenCounter) -> list[int]:
    """Each message's tokens, counted alone: its text less an empty message of its role (a
    template's fixed parts, e.g. a default system prompt), plus the markers around a message."""
    empty: dict[str, int] = {}
    costs = []
    for message in history:
        if message.role not in empty:
            empty[message.role] = count_tokens([ChatMessage(message.role, "")])
        costs.append(max(0, count_tokens([message]) - empty[message.role]) + PER_MESSAGE_TOKENS)
    return costs


def _first_kept(costs: list[int], start: int, room: int) -> int:
    """The first history message kept when whole exchanges (user + assistant) are dropped from
    `start` on until the rest fits `room` tokens."""
    total = sum(costs[start:])
    while total > room and start < len(costs):
        total -= sum(costs[start : start + 2])
        start += 2
    return min(start, len(costs))
