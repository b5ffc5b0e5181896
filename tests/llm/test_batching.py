"""Continuous batching on the tiny Qwen2 (real transformers model, random weights): replies that
run together are token for token what transformers' own `generate()` makes for each alone, join
and leave at any step, keep their own settings, and a hung-up reply frees its slot at the next
step. Newcomers are prefilled together, a prompt prefix they share (or that a running reply holds)
computed once."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing

import pytest
import torch

from llm import batching
from llm.base import ChatMessage, GenerationOptions
from llm.transformers_backend import TransformersBackend
from tests.llm.conftest import HFReply, started

GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
PENALISED = GenerationOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.3)
QUESTIONS = ["Hello there, who are you?", "Where is the harbour?", "Tell me a story about the sea, please.", "Hi"]
# A persona long enough that replies to it share a prompt prefix worth computing once.
CAPTAIN = (
    "You are Captain Mara Vell, who has sailed the northern trade routes for thirty years. You speak "
    "plainly, with a dry sense of humour, and you tell stories of storms off the Grey Cape and of the "
    "lighthouse keeper of Saltmere. Keep your answers short: they are read aloud."
)


async def reply(
    backend: TransformersBackend, question: str, options: GenerationOptions = GREEDY, system: str = "You are a sailor."
) -> tuple[str, str]:
    messages = [ChatMessage("system", system), ChatMessage("user", question)]
    text, finish = "", None
    async with aclosing(backend.stream_chat(messages, options)) as pieces:
        async for piece in pieces:
            text += piece.text
            finish = piece.finish_reason or finish
    return text, finish


def alone(
    hf_greedy: HFReply, question: str, options: GenerationOptions = GREEDY, system: str = "You are a sailor."
) -> tuple[str, str]:
    """What `reply` must give: transformers' own greedy `generate()` on the same prompt."""
    return hf_greedy([ChatMessage("system", system), ChatMessage("user", question)], options)


@pytest.mark.parametrize("spare_columns", [batching.SPARE_COLUMNS, 3], ids=["default", "cache-grows-every-3-steps"])
async def test_replies_decoded_together_are_token_for_token_what_each_makes_alone(
    model_dir, tmp_path, monkeypatch, hf_greedy, spare_columns
):
    monkeypatch.setattr(batching, "SPARE_COLUMNS", spare_columns)
    expected = [alone(hf_greedy, q) for q in QUESTIONS]
    one_at_a_time = await started(model_dir, tmp_path, max_batch=1)
    try:
        singly = [await reply(one_at_a_time, q) for q in QUESTIONS]
    finally:
        await one_at_a_time.stop()
    batched = await started(model_dir, tmp_path, max_batch=4)
    try:
        together = await asyncio.gather(*(reply(batched, q) for q in QUESTIONS))
        # Staggered: replies join a batch that is already decoding, and leave it at different steps.
        staggered = await asyncio.gather(*(_after(0.01 * i, reply(batched, q)) for i, q in enumerate(QUESTIONS * 2)))
    finally:
        await batched.stop()
    assert singly == expected  # a batch of one
    assert [text for text, _ in expected] == [text for text, _ in together] == [text for text, _ in staggered[:4]]
    assert [text for text, _ in staggered[4:]] == [text for text, _ in expected]  # more replies than slots: they wait
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


# (system prompt, question, options): three replies to the captain (a long shared prefix, questions
# of different lengths, one with a repetition penalty), two to the short sailor prompt, one alone.
MIXED = [
    (CAPTAIN, QUESTIONS[0], GREEDY),
    (CAPTAIN, QUESTIONS[2], PENALISED),
    ("You are a sailor.", QUESTIONS[1], GREEDY),
    (CAPTAIN, QUESTIONS[3], GREEDY),
    ("You are a sailor.", QUESTIONS[2], PENALISED),
    ("Answer in one word.", QUESTIONS[0], GREEDY),
]


@pytest.mark.parametrize(
    "running_system",
    [CAPTAIN, "Answer in one word."],
    ids=["prefix-copied-from-a-running-reply", "prefix-computed-once"],
)
async def test_newcomers_prefilled_together_are_token_for_token_what_each_makes_alone(
    model_dir, tmp_path, monkeypatch, hf_greedy, running_system
):
    # Prompt passes as long as they may be (PREFILL_CHUNK_TOKENS), whatever a decode step takes:
    # each prefix is one pass, which makes "computed once" countable.
    monkeypatch.setattr(batching, "PREFILL_SHARE", float("inf"))
    expected = [alone(hf_greedy, question, options, system) for system, question, options in MIXED]
    batched = await started(model_dir, tmp_path, max_batch=8)
    passes = _record_forward_passes(batched)
    try:
        # A first reply's prefill is held until the others wait in the inbox: they join together,
        # next to that running reply (whose prompt prefix they may copy).
        passes.hold()
        first = asyncio.create_task(reply(batched, "Who are you?", GREEDY, running_system))
        await passes.held.wait()
        rest = [asyncio.create_task(reply(batched, question, options, system)) for system, question, options in MIXED]
        while batched._batcher._inbox.qsize() < len(MIXED):
            await asyncio.sleep(0.005)
        passes.release()
        together = await asyncio.gather(*rest)
        await first
        captain_prompt = batched.count_tokens([ChatMessage("system", CAPTAIN), ChatMessage("user", "Hi")])
    finally:
        await batched.stop()
    assert [text for text, _ in together] == [text for text, _ in expected]
    prefills = [shape for shape in passes.shapes if shape[1] > 1]
    # The captain's three newcomers shared one pass over what follows the persona ...
    assert (3, True) in [(rows, width < batching.MIN_SHARED_PREFIX) for rows, width in prefills]
    # ... and the persona was computed once: by the running reply's prefill, or by a pass of its own.
    assert len([shape for shape in prefills if shape[1] > captain_prompt // 2]) == 1


async def test_a_newcomer_copies_the_prefix_a_running_reply_holds(model_dir, tmp_path, hf_greedy):
    expected = alone(hf_greedy, QUESTIONS[1], PENALISED, CAPTAIN)
    batched = await started(model_dir, tmp_path, max_batch=4)
    passes = _record_forward_passes(batched)
    long = GenerationOptions(max_new_tokens=2000, temperature=0.0, repetition_penalty=1.0)
    try:
        running = batched.stream_chat([ChatMessage("system", CAPTAIN), ChatMessage("user", QUESTIONS[0])], long)
        await anext(running)  # decoding
        later = await reply(batched, QUESTIONS[1], PENALISED, CAPTAIN)
        await running.aclose()
    finally:
        await batched.stop()
    assert later == expected
    newcomer_prefill = [shape for shape in passes.shapes if shape[1] > 1][1]
    assert newcomer_prefill[1] < batching.MIN_SHARED_PREFIX  # only what follows the shared persona


async def test_a_prompt_that_fails_a_shared_prefill_fails_alone(model_dir, tmp_path, hf_greedy):
    expected = [alone(hf_greedy, question, GREEDY, CAPTAIN) for question in QUESTIONS[:2]]
    batched = await started(model_dir, tmp_path, max_batch=8)
    passes = _record_forward_passes(batched)
    passes.poison = set(batched._tokenizer.encode("Ω", add_special_tokens=False))  # in no other prompt
    try:
        passes.hold()
        first = asyncio.create_task(reply(batched, "Who are you?", GREEDY, "Answer in one word."))
        await passes.held.wait()
        questions = [QUESTIONS[0], "Ω?", QUESTIONS[1]]
        rest = [asyncio.create_task(reply(batched, question, GREEDY, CAPTAIN)) for question in questions]
        while batched._batcher._inbox.qsize() < len(rest):
            await asyncio.sleep(0.005)
        passes.release()
        results = await asyncio.gather(*rest, return_exceptions=True)
        await first
    finally:
        await batched.stop()
    assert [results[0], results[2]] == expected
    assert isinstance(results[1], Exception) and "failed to read the prompt" in str(results[1])
    assert any(rows == 3 for rows, width in passes.shapes if width > 1)  # they were tried together first


class _ForwardPasses:
    """The model's forward passes, by input shape; can hold the first until released, and fail a
    prompt pass over a `poison` token."""

    def __init__(self) -> None:
        self.poison: set[int] = set()
        self.shapes: list[tuple[int, int]] = []
        self.held = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._release = threading.Event()
        self._release.set()

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def seen(self, shape: tuple[int, int]) -> None:
        self.shapes.append(shape)
        if not self._release.is_set():
            self._loop.call_soon_threadsafe(self.held.set)
            self._release.wait(30)


def _record_forward_passes(backend: TransformersBackend) -> _ForwardPasses:
    model = backend._model
    real_forward, passes = model.forward, _ForwardPasses()

    def forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        passes.seen(tuple(ids.shape))
        if ids.shape[1] > 1 and passes.poison & set(ids.flatten().tolist()):
            raise RuntimeError("this prompt breaks the model")
        return real_forward(*args, **kwargs)

    model.forward = forward
    return passes


def test_plan_groups_newcomers_where_that_saves_prompt_tokens():
    def newcomer(prompt: list[int]):
        return batching._Reply([], GREEDY, None, prompt=prompt)  # type: ignore[arg-type]

    persona = list(range(100, 160))
    captain_a, captain_b = newcomer(persona + [1, 2, 3]), newcomer(persona + [4, 5, 6, 7, 8])
    similar_length = [newcomer(list(range(200, 240))), newcomer(list(range(300, 338)))]
    much_longer = newcomer(list(range(400, 700)))
    groups = batching._plan_prefill([similar_length[0], captain_a, much_longer, similar_length[1], captain_b])
    # The captain's share their persona; two prompts of about the same length share a pass (the
    # padding costs less than a pass); a much longer one is not padded to.
    assert groups == [[captain_a, captain_b], similar_length, [much_longer]]
    assert batching._shared_prefix([captain_a.prompt, captain_b.prompt]) == len(persona)
    assert batching._shared_prefix([persona[:10] + [1], persona[:10] + [2]]) == 0  # too short to be worth a pass
    assert batching._shared_prefix([persona, persona]) == len(persona) - 1  # each keeps a token of its own


def test_nucleus_keeps_the_smallest_set_reaching_top_p_without_sorting_the_vocabulary():
    torch.manual_seed(0)
    peaked = torch.softmax(torch.randn(5000) * 4, dim=-1)
    flat = torch.softmax(torch.randn(5000) * 0.01, dim=-1)  # the top 256 are far from top_p
    for probs in (peaked, flat):
        for top_p in (0.1, 0.5, 0.9, 0.999):
            weights, ids = batching._nucleus(probs.clone(), top_p)
            ordered, order = probs.sort(descending=True)
            kept = order[(ordered.cumsum(0) - ordered) <= top_p]
            assert set(ids[weights > 0].tolist()) == set(kept.tolist())
            assert torch.equal(weights[weights > 0], probs[ids[weights > 0]])


def test_sampling_applies_each_rows_own_repetition_penalty():
    def row(penalty: float, prompt: list[int]):
        options = GenerationOptions(temperature=0.0, repetition_penalty=penalty)
        return batching._Reply([], options, None, prompt=prompt)  # type: ignore[arg-type]

    # Token 0 leads by a little; a penalty on it (seen in the prompt) lets token 1 win.
    logits = torch.tensor([[2.0, 1.9, -1.0], [2.0, 1.9, -1.0], [2.0, 1.9, -1.0], [-2.0, -2.1, -5.0]])
    rows = [row(1.0, [0]), row(1.3, [0]), row(1.3, [2]), row(1.3, [0])]
    assert batching.sample_next(logits.clone(), rows) == [0, 1, 0, 1]  # negative logits: multiplied


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


# A system prompt of ~3 KB: its prefill is many times a decode step's work.
LOGBOOK = " ".join(
    f"Day {day}: wind from the {side}, {knots} knots; we sighted the {sight} and kept our course."
    for day, side, knots, sight in zip(
        range(1, 41), ["north", "east", "south", "west"] * 10, range(5, 45),
        ["Grey Cape", "Saltmere light", "gulls", "fleet"] * 10,
    )
)


def greedy_for(tokens: int) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=tokens, temperature=0.0, repetition_penalty=1.0)


def sailor(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a sailor."), ChatMessage("user", question)]


async def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_replies_steps(
    model_dir, tmp_path, monkeypatch, hf_greedy
):
    # One pass of 64 prompt tokens per step, whatever the passes take: each step lends more time
    # than any pass takes, and a pass may be sized to take next to none.
    for knob, value in [("PREFILL_SHARE", 1e9), ("PREFILL_BURST_S", 1e-9), ("MIN_PREFILL_CHUNK_TOKENS", 64),
                        ("PREFILL_CHUNK_TOKENS", 64)]:
        monkeypatch.setattr(batching, knob, value, raising=False)
    long_alone = alone(hf_greedy, QUESTIONS[0], GREEDY, LOGBOOK)
    running_alone = alone(hf_greedy, QUESTIONS[1], greedy_for(60))
    batched = await started(model_dir, tmp_path, max_batch=4)
    passes = _record_forward_passes(batched)
    long_prompt = batched.count_tokens([ChatMessage("system", LOGBOOK), ChatMessage("user", QUESTIONS[0])])
    try:
        running = batched.stream_chat(sailor(QUESTIONS[1]), greedy_for(60))
        first = await anext(running)  # decoding
        seen_before = len(passes.shapes)
        newcomer = await reply(batched, QUESTIONS[0], GREEDY, LOGBOOK)
        rest = [piece async for piece in running]
        admitted = passes.shapes[seen_before:]
    finally:
        await batched.stop()
    assert long_prompt > 8 * 64
    assert newcomer == long_alone  # chunked, it is token for token what generate() makes
    assert first.text + "".join(piece.text for piece in rest) == running_alone[0]
    prompt_passes = [i for i, (rows, width) in enumerate(admitted) if width > 1]
    assert sum(admitted[i][1] for i in prompt_passes) >= long_prompt - 1
    assert all(admitted[i][1] <= 64 for i in prompt_passes)
    # The running reply took a step between each two of the newcomer's passes.
    assert all((1, 1) in admitted[a + 1 : b] for a, b in zip(prompt_passes, prompt_passes[1:]))


async def test_short_rows_do_not_hold_a_long_prompts_length_in_padding(model_dir, tmp_path, monkeypatch, hf_greedy):
    monkeypatch.setattr(batching, "PADDING_ALLOWANCE_COLUMNS", 0, raising=False)
    monkeypatch.setattr(batching, "PREFILL_SHARE", float("inf"), raising=False)  # joins while the others run
    expected = [alone(hf_greedy, question, greedy_for(200)) for question in QUESTIONS[:3]]
    long_alone = alone(hf_greedy, QUESTIONS[3], greedy_for(40), LOGBOOK)
    batched = await started(model_dir, tmp_path, max_batch=4)
    config = batched._model.config
    head_dim = config.hidden_size // config.num_attention_heads
    column_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # keys + values, fp32
    prompts = [batched.count_tokens(sailor(q)) for q in QUESTIONS[:3]]
    long_prompt = batched.count_tokens([ChatMessage("system", LOGBOOK), ChatMessage("user", QUESTIONS[3])])
    try:
        short = [batched.stream_chat(sailor(q), greedy_for(200)) for q in QUESTIONS[:3]]
        firsts = [await anext(stream) for stream in short]
        logbook = [ChatMessage("system", LOGBOOK), ChatMessage("user", QUESTIONS[3])]
        newcomer = batched.stream_chat(logbook, greedy_for(40))
        long_first = await anext(newcomer)
        decoding, held = len(batched._batcher._rows), batched._batcher.kv_cache_bytes
        texts = [first.text + "".join([piece.text async for piece in stream]) for first, stream in zip(firsts, short)]
        long_text = long_first.text + "".join([piece.text async for piece in newcomer])
    finally:
        await batched.stop()
    assert texts == [text for text, _ in expected] and long_text == long_alone[0]
    assert decoding == 4
    # Every row's real columns (prompt and up to 200 replied tokens), and a bucket's spare columns
    # (grown once at most), but not three short rows padded to the long prompt's length.
    real_columns = sum(prompts) + long_prompt + 4 * 200
    assert held <= (real_columns + 4 * 2 * batching.SPARE_COLUMNS) * column_bytes
    assert held * 3 < 4 * long_prompt * column_bytes


async def test_a_newcomer_that_hangs_up_during_its_long_prompt_stops_being_computed(model_dir, tmp_path, monkeypatch):
    for knob, value in [("PREFILL_SHARE", 1e9), ("PREFILL_BURST_S", 1e-9), ("MIN_PREFILL_CHUNK_TOKENS", 64),
                        ("PREFILL_CHUNK_TOKENS", 64)]:
        monkeypatch.setattr(batching, knob, value, raising=False)
    batched = await started(model_dir, tmp_path, max_batch=4)
    passes = _record_forward_passes(batched)

    def prompt_passes() -> int:
        return sum(1 for _, width in passes.shapes if width > 1)

    async def until(condition) -> None:
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.002)

    try:
        running = batched.stream_chat(sailor(QUESTIONS[1]), greedy_for(2000))
        await anext(running)
        before = prompt_passes()
        logbook = [ChatMessage("system", LOGBOOK), ChatMessage("user", QUESTIONS[3])]
        newcomer = asyncio.create_task(anext(batched.stream_chat(logbook, greedy_for(10))))
        await until(lambda: prompt_passes() >= before + 3)
        newcomer.cancel()  # the client hangs up while its prompt is computed
        await asyncio.gather(newcomer, return_exceptions=True)
        at_hang_up = prompt_passes()
        decode_steps = len(passes.shapes)
        await until(lambda: len(passes.shapes) >= decode_steps + 10)
        computed = prompt_passes() - before
        assert batched.active_generations == 1
        await running.aclose()
    finally:
        await batched.stop()
    long_prompt_passes = batched.count_tokens(logbook) // 64
    assert prompt_passes() - at_hang_up <= 1  # at most the pass under way when it hung up
    assert computed < long_prompt_passes
