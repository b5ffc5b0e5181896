"""Continuous batching on the tiny Qwen2 (real transformers model, random weights): replies that
run together are token for token what each makes alone, join and leave at any step, keep their
own settings, and a hung-up reply frees its slot at the next step."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from llm.base import ChatMessage, GenerationOptions
from llm.transformers_backend import TransformersBackend
from tests.fixtures.tiny_qwen2 import build_tiny_qwen2

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
QUESTIONS = ["Hello there, who are you?", "Where is the harbour?", "Tell me a story about the sea, please.", "Hi"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


async def started(model_dir, tmp_path, max_batch: int) -> TransformersBackend:
    backend = TransformersBackend(model_source=model_dir, cache_dir=tmp_path, device="cpu", max_batch=max_batch)
    await backend.start()
    return backend


async def reply(backend: TransformersBackend, question: str, options: GenerationOptions = GREEDY) -> tuple[str, str]:
    messages = [ChatMessage("system", "You are a sailor."), ChatMessage("user", question)]
    text, finish = "", None
    async with aclosing(backend.stream_chat(messages, options)) as pieces:
        async for piece in pieces:
            text += piece.text
            finish = piece.finish_reason or finish
    return text, finish


async def test_replies_decoded_together_are_token_for_token_what_each_makes_alone(model_dir, tmp_path):
    serial = await started(model_dir, tmp_path, max_batch=1)
    alone = [await reply(serial, q) for q in QUESTIONS]
    await serial.stop()
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        together = await asyncio.gather(*(reply(batched, q) for q in QUESTIONS))
        # Staggered: replies join a batch that is already decoding, and leave it at different steps.
        staggered = await asyncio.gather(*(_after(0.01 * i, reply(batched, q)) for i, q in enumerate(QUESTIONS * 2)))
    finally:
        await batched.stop()
    assert [text for text, _ in alone] == [text for text, _ in together] == [text for text, _ in staggered[:4]]
    assert [text for text, _ in staggered[4:]] == [text for text, _ in alone]  # more replies than slots: they wait
    assert {finish for _, finish in together} <= {"stop", "length"} and all(text for text, _ in together)


async def test_each_reply_keeps_its_own_limit_and_sampling(model_dir, tmp_path):
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        short = GenerationOptions(max_new_tokens=3, temperature=0.0, repetition_penalty=1.0)
        hot = GenerationOptions(max_new_tokens=24, temperature=1.5, top_p=0.9, repetition_penalty=1.3)
        results = await asyncio.gather(reply(batched, QUESTIONS[0], short), reply(batched, QUESTIONS[0]), reply(batched, QUESTIONS[0], hot))
    finally:
        await batched.stop()
    (short_text, short_finish), (greedy_text, _), (hot_text, _) = results
    assert short_finish == "length" and greedy_text.startswith(short_text) and len(short_text) < len(greedy_text)
    assert hot_text != greedy_text  # sampled, not greedy


async def test_a_hung_up_reply_frees_its_slot_at_once(model_dir, tmp_path):
    batched = await started(model_dir, tmp_path, max_batch=2)
    long = GenerationOptions(max_new_tokens=2000, temperature=0.0, repetition_penalty=1.0)
    try:
        messages = [ChatMessage("user", QUESTIONS[2])]
        stream = batched.stream_chat(messages, long)
        await anext(stream)
        assert batched.active_generations == 1
        await stream.aclose()
        left = time.perf_counter()
        while batched.active_generations and time.perf_counter() - left < 1:
            await asyncio.sleep(0.005)
        assert batched.active_generations == 0  # within one step, far under a second
        assert (await reply(batched, QUESTIONS[0]))[0]  # the slot serves the next reply
    finally:
        await batched.stop()


async def _after(delay_s: float, work):
    await asyncio.sleep(delay_s)
    return await work


async def test_a_failing_decode_step_fails_its_replies_and_the_next_reply_still_runs(model_dir, tmp_path):
    batched = await started(model_dir, tmp_path, max_batch=2)
    model = batched._model
    real_forward, calls = model.forward, {"n": 0}

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # prefill, one good step, then a broken one
            raise RuntimeError("out of memory in a decode step")
        return real_forward(*args, **kwargs)

    model.forward = flaky_forward
    try:
        with pytest.raises(Exception, match="failed while writing the reply"):
            await asyncio.wait_for(reply(batched, QUESTIONS[0]), 30)
        model.forward = real_forward
        assert (await asyncio.wait_for(reply(batched, QUESTIONS[1]), 30))[0]
        assert batched.active_generations == 0
    finally:
        model.forward = real_forward
        await batched.stop()
