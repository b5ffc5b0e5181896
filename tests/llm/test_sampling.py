"""Sampling settings at their edges on the tiny Qwen2 (real transformers model, random weights):
no temperature, top_p or broken row's scores may end the other replies of a batch."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import replace

import pytest
import torch

from llm import batching
from llm.base import ChatMessage, GenerationOptions
from llm.transformers_backend import TransformersBackend
from tests.llm.conftest import started

GREEDY = GenerationOptions(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0)
QUESTIONS = ["Hello there, who are you?", "Where is the harbour?", "Tell me a story about the sea, please."]


async def reply(backend: TransformersBackend, question: str, options: GenerationOptions = GREEDY) -> tuple[str, str]:
    messages = [ChatMessage("system", "You are a sailor."), ChatMessage("user", question)]
    text, finish = "", None
    async with aclosing(backend.stream_chat(messages, options)) as pieces:
        async for piece in pieces:
            text += piece.text
            finish = piece.finish_reason or finish
    return text, finish


@pytest.mark.parametrize("temperature", [8e-38, 1e-320, 1e-9])
async def test_a_tiny_temperature_is_greedy_and_the_batch_goes_on(model_dir, tmp_path, temperature):
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        alone = [await reply(batched, question) for question in QUESTIONS]
        tiny = GenerationOptions(max_new_tokens=16, temperature=temperature, top_p=0.9, repetition_penalty=1.0)
        # Admitted together: the tiny temperature is sampled in the same steps as the others.
        together = await asyncio.gather(*(reply(batched, q) for q in QUESTIONS), reply(batched, QUESTIONS[0], tiny))
    finally:
        await batched.stop()
    assert together[:3] == alone  # the other replies finished as they do alone
    assert together[3] == alone[0]  # too cold to be anything but the most likely token


@pytest.mark.parametrize("top_p", [0.0, 1e-45], ids=["zero", "denormal"])
async def test_a_top_p_that_keeps_no_token_keeps_the_most_likely_one(model_dir, tmp_path, top_p):
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        alone = await reply(batched, QUESTIONS[1])
        narrow = GenerationOptions(max_new_tokens=16, temperature=1.0, top_p=top_p, repetition_penalty=1.0)
        everything = GenerationOptions(max_new_tokens=16, temperature=1.0, top_p=1.0, repetition_penalty=1.0)
        together = await asyncio.gather(
            reply(batched, QUESTIONS[1], narrow), reply(batched, QUESTIONS[0], everything), reply(batched, QUESTIONS[1])
        )
    finally:
        await batched.stop()
    assert together[0] == together[2] == alone
    assert together[1][0] and together[1][1] in {"stop", "length"}


def _row(options: GenerationOptions) -> batching._Reply:
    return batching._Reply([], options, None, prompt=[1])  # type: ignore[arg-type]


def test_a_row_without_a_usable_score_fails_alone():
    sampled = GenerationOptions(temperature=1.0, top_p=0.9, repetition_penalty=1.0)
    greedy = GenerationOptions(temperature=0.0, repetition_penalty=1.0)
    logits = torch.tensor(
        [
            [float("nan")] * 4,  # a broken row
            [1.0, float("nan"), 3.0, 2.0],  # NaN is no candidate
            [1.0, float("inf"), 3.0, 2.0],  # inf is the best candidate, never NaN after scaling
            [0.5, 2.0, float("-inf"), 1.0],
        ]
    )
    tokens = batching.sample_next(logits, [_row(sampled), _row(greedy), _row(sampled), _row(greedy)])
    assert tokens == [None, 2, 1, 1]


def test_extreme_temperatures_never_give_nan_odds():
    for temperature in (1e-5, 1e-3, 1e30, float("inf")):
        options = GenerationOptions(temperature=temperature, top_p=1.0, repetition_penalty=1.0)
        scores = torch.tensor([[3e38, -3e38, 0.0, float("-inf")]])
        token = batching.sample_next(scores, [_row(options)])[0]
        assert token in {0, 1, 2}


def _sampled(seed: int | None) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=16, temperature=1.5, top_p=0.95, repetition_penalty=1.0, seed=seed)


async def test_a_seeded_reply_is_the_same_whatever_shares_its_batch(model_dir, tmp_path):
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        alone = await reply(batched, QUESTIONS[0], _sampled(seed=7))
        # Beside other sampled replies (which draw from the global generator) and itself.
        together = await asyncio.gather(
            reply(batched, QUESTIONS[1], _sampled(seed=None)),
            reply(batched, QUESTIONS[0], _sampled(seed=7)),
            reply(batched, QUESTIONS[2], _sampled(seed=None)),
            reply(batched, QUESTIONS[0], _sampled(seed=7)),
        )
        other_seed = await reply(batched, QUESTIONS[0], _sampled(seed=8))
    finally:
        await batched.stop()
    assert together[1] == together[3] == alone
    assert other_seed != alone


async def test_a_seeded_reply_is_reproducible_one_at_a_time(model_dir, tmp_path):
    one_at_a_time = await started(model_dir, tmp_path, max_batch=1)
    try:
        first = await reply(one_at_a_time, QUESTIONS[0], _sampled(seed=7))
        await reply(one_at_a_time, QUESTIONS[0], _sampled(seed=None))  # moves the global generator on
        again = await reply(one_at_a_time, QUESTIONS[0], _sampled(seed=7))
    finally:
        await one_at_a_time.stop()
    assert first == again


async def _pieces(backend: TransformersBackend, question: str, options: GenerationOptions) -> list[str]:
    messages = [ChatMessage("system", "You are a sailor."), ChatMessage("user", question)]
    async with aclosing(backend.stream_chat(messages, options)) as stream:
        return [piece.text async for piece in stream]


@pytest.mark.parametrize("max_batch", [4, 1], ids=["batched", "one-at-a-time"])
async def test_a_stop_string_spanning_pieces_ends_the_reply_before_it(model_dir, tmp_path, max_batch):
    backend = await started(model_dir, tmp_path, max_batch=max_batch)
    try:
        pieces = [piece for piece in await _pieces(backend, QUESTIONS[2], GREEDY) if piece]
        # A stop string made of the end of one piece and the start of the next, past the first.
        at = next(i for i in range(1, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1])
        stop = pieces[at][-2:] + pieces[at + 1][:1]
        full = "".join(pieces)
        stopping = GenerationOptions(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0, stop=("never", stop))
        results = await asyncio.gather(reply(backend, QUESTIONS[2], stopping), reply(backend, QUESTIONS[0]))
        alone_other = await reply(backend, QUESTIONS[0])
    finally:
        await backend.stop()
    assert results[0] == (full[: full.index(stop)], "stop")
    assert results[1] == alone_other  # the reply beside it is untouched


async def test_a_stop_string_that_never_comes_holds_nothing_back_at_the_end(model_dir, tmp_path):
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        full, finish = await reply(batched, QUESTIONS[1])
        # The reply's last three characters start this stop string: held back until the reply ends.
        stop = full[-3:] + "\x00never"
        assert await reply(batched, QUESTIONS[1], replace(GREEDY, stop=(stop,))) == (full, finish)
    finally:
        await batched.stop()


@pytest.mark.parametrize("top_p", [0.0, 1e-45], ids=["zero", "denormal"])
async def test_a_top_p_that_keeps_no_token_is_greedy_one_at_a_time_too(model_dir, tmp_path, hf_greedy, top_p):
    one_at_a_time = await started(model_dir, tmp_path, max_batch=1)
    try:
        narrow_options = GenerationOptions(max_new_tokens=16, temperature=1.0, top_p=top_p, repetition_penalty=1.0)
        narrow = await reply(one_at_a_time, QUESTIONS[1], narrow_options)
    finally:
        await one_at_a_time.stop()
    assert narrow == hf_greedy([ChatMessage("system", "You are a sailor."), ChatMessage("user", QUESTIONS[1])], GREEDY)
