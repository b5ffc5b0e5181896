"""Conversation memory under failure: a store that errors or is slow never turns a delivered reply
into an error, a store that cannot be read is a 503, and history is trimmed to the model's context."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from chat2audio.context import estimate_tokens, fit_history
from chat2audio.errors import InvalidInput, SessionStoreUnavailable
from llm.base import ChatMessage
from llm.scripted import ScriptedLLM
from tests.inprocess import scripted_service, speak


class BrokenStore:
    def __init__(self, *, reads: bool = True) -> None:
        self.reads = reads

    async def history(self, speaker, session_id):
        if not self.reads:
            raise ConnectionError("store down")
        return []

    async def remember(self, speaker, session_id, user, assistant):
        raise ConnectionError("store down")

    async def forget(self, session_id):
        return 0

    async def close(self):
        pass


async def test_a_store_failing_to_remember_does_not_fail_the_delivered_reply(tmp_path, caplog):
    async with scripted_service(tmp_path) as service:
        service.conversations.store = BrokenStore()
        with caplog.at_level(logging.ERROR):
            assert await speak(service, "Hello there, friend.", session_id="s") > 0
        assert "could not remember the exchange" in caplog.text
        assert service.admission.admitted == 0 and len(service.turn_order) == 0


async def test_a_store_that_cannot_be_read_is_a_503_naming_the_way_out(tmp_path):
    async with scripted_service(tmp_path) as service:
        service.conversations.store = BrokenStore(reads=False)
        with pytest.raises(SessionStoreUnavailable, match="without session_id") as raised:
            await speak(service, "Hello there, friend.", session_id="s")
        assert raised.value.status == 503 and "store down" not in raised.value.message
        assert await speak(service, "Hello there, friend.") > 0  # sessionless chat still works


class SlowStore(BrokenStore):
    def __init__(self) -> None:
        super().__init__()
        self.remembered: list[str] = []

    async def remember(self, speaker, session_id, user, assistant):
        await asyncio.sleep(0.2)  # a network round trip, as with Redis
        self.remembered.append(assistant)


async def test_what_was_spoken_is_remembered_even_when_the_client_hangs_up(tmp_path):
    async with scripted_service(tmp_path, scripted_tts_rtf="0.2") as service:
        service.conversations.store = store = SlowStore()
        # Starlette cancels a hung-up response through an anyio cancel scope, which re-cancels
        # every await inside it, the clean-up's included: do the same here.
        scope = anyio.CancelScope()

        async def listen() -> None:
            with scope:
                await speak(service, "First sentence here. " + "More words follow now. " * 20, session_id="s")

        task = asyncio.create_task(listen())
        await asyncio.sleep(1.0)  # the first sentence (~1 s of audio at 0.2 RTF) has been spoken
        scope.cancel()
        await asyncio.wait_for(task, 5)
        assert store.remembered and store.remembered[0].startswith("First sentence here.")
        assert service.admission.admitted == 0 and len(service.turn_order) == 0


def test_history_is_trimmed_oldest_first_to_the_token_budget():
    system = [ChatMessage("system", "You are Aria.")]
    history = []
    for n in range(5):
        history += [ChatMessage("user", f"问题{n}" * 100), ChatMessage("assistant", f"回答{n}" * 100)]
    user = ChatMessage("user", "现在呢？")
    fitted = fit_history(system, history, user, budget=1000)
    assert fitted[0] == system[0] and fitted[-1] == user
    assert estimate_tokens(fitted) <= 1000
    assert fitted[1:-1] == history[-len(fitted) + 2 :]  # whole exchanges, the newest kept
    assert len(fitted) - 2 == 4  # two exchanges of ~2×300 tokens fit, three do not
    with pytest.raises(InvalidInput, match="too long for the model's context"):
        fit_history(system, [], ChatMessage("user", "长" * 2000), budget=1000)


class RecordingLLM(ScriptedLLM):
    def __init__(self) -> None:
        super().__init__(token_delay_s=0.0)
        self.prompts: list[list[ChatMessage]] = []

    async def stream_chat(self, messages, options):
        self.prompts.append(messages)
        async for piece in super().stream_chat(messages, options):
            yield piece


async def test_long_chinese_turns_never_push_a_session_past_the_context(tmp_path):
    # vLLM's --max-model-len 4096 with 160 new tokens; long Chinese turns used to fail every later turn.
    async with scripted_service(tmp_path, llm_context_tokens="4096", llm_max_new_tokens="160") as service:
        service.llm = llm = RecordingLLM()
        for n in range(6):
            assert await speak(service, f"第{n}个很长的问题。" + "这是一个很长的句子。" * 120, session_id="zh") > 0
        for prompt in llm.prompts:
            assert estimate_tokens(prompt) <= 4096 - 160
        assert len(llm.prompts[-1]) < 2 + 2 * 5  # older exchanges were dropped
        assert llm.prompts[-1][-1].content.startswith("第5个")
