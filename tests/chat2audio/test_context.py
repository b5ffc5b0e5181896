"""Fitting a long client-kept conversation into the context: linear in its length, and never on
the event loop (issue 19, item 2: 1,700 one-character messages froze every stream for 14 s)."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from chat2audio.context import estimate_tokens, fit_history
from chat2audio.errors import InvalidInput
from chat2audio.protocol.chat import ChatOptions
from llm.base import ChatMessage
from tests.inprocess import scripted_service
from tests.loop_watch import loop_gaps


def chat(pairs: int) -> list[ChatMessage]:
    messages = []
    for n in range(pairs):
        messages += [ChatMessage("user", f"q{n}"), ChatMessage("assistant", f"a{n}")]
    return messages


class RenderCounter:
    """A token counter that records how many messages it was asked to render in all."""

    def __init__(self, delay_per_message_s: float = 0.0) -> None:
        self.rendered = 0
        self.delay_per_message_s = delay_per_message_s

    def __call__(self, messages: list[ChatMessage]) -> int:
        self.rendered += len(messages)
        if self.delay_per_message_s:
            time.sleep(self.delay_per_message_s * len(messages))
        return estimate_tokens(messages)


def test_each_message_is_counted_about_once_however_many_are_dropped():
    history = chat(850)  # 1,700 messages, as in the repro
    counter = RenderCounter()
    system, user = [ChatMessage("system", "You are Aria.")], ChatMessage("user", "Hi")
    fitted = fit_history(system, history, user, budget=200, count_tokens=counter)
    assert estimate_tokens(fitted) <= 200 and fitted[0] == system[0] and fitted[-1] == user
    assert fitted[1:-1] == history[-(len(fitted) - 2):] and len(fitted) > 2  # the newest whole exchanges
    # Re-rendering the rest after each dropped exchange rendered ~720,000 messages.
    assert counter.rendered < 4 * len(history)


def test_the_fitted_prompt_is_the_newest_that_fits_even_when_single_counts_are_off():
    # A template whose joins cost more than its messages alone: the exact count corrects the sum.
    def joined(messages: list[ChatMessage]) -> int:
        return estimate_tokens(messages) + 3 * len(messages)

    system, user = [ChatMessage("system", "S")], ChatMessage("user", "Hi")
    fitted = fit_history(system, chat(100), user, budget=150, count_tokens=joined)
    assert joined(fitted) <= 150 and len(fitted) > 2
    with pytest.raises(InvalidInput, match="too long for the model's context"):
        fit_history(system, [], ChatMessage("user", "x" * 600), budget=150, count_tokens=joined)


async def test_fitting_a_long_conversation_leaves_the_event_loop_free(tmp_path):
    async with scripted_service(tmp_path, llm_context_tokens="4096", llm_max_new_tokens="160") as service:
        counter = RenderCounter(delay_per_message_s=0.002)  # a slow tokenizer: ~1 s for this chat
        # The scripted LLM given the CountsTokens capability (llm/base.py), with a slow counter.
        service.llm.count_tokens, service.llm.context_tokens, service.llm.counts_exactly = counter, None, True
        messages = [*chat(200), ChatMessage("user", "And now?")]
        options = ChatOptions(speaker="Low", format="text")
        async with loop_gaps() as gaps:
            await asyncio.sleep(0.05)  # the watch has started ticking
            async with aclosing(service.reply_to_messages(options, messages)) as events:
                async for _ in events:
                    pass
        assert counter.rendered > 0
        assert max(gaps) < 0.3, f"the event loop stood still for {max(gaps):.2f} s"
