"""Continuous batching for an in-process causal LM: concurrent replies share decode steps.

One thread owns the model. Each step it lets newcomers in, runs a forward pass for the running
replies, samples each row on its own with that reply's own settings (a row that yields no token
ends alone) and hands each reply its new text; then it computes newcomers' prompts for the time
the running replies lend it (about a step's time per step, accounted over several steps: see
PREFILL_SHARE), a long prompt in passes over many steps, so that a long prompt slows the running
replies down instead of stopping them. A reply leaves at its end, its token limit, a stop string,
or the step after its client hung up: its slot is free at once.

Where the time goes (SmolLM2-135M, float32, 2-core CPU), and what this module does about it:

- Prefill is compute-bound (~1.7 ms per prompt token), so 8 newcomers cost 8 prompts' worth
  before any of them hears a word. Newcomers that arrive together are prefilled together
  (`_plan_prefill`): a prompt prefix that several of them share (their speaker's system prompt),
  or that a running reply already holds in its KV cache, is computed once, and prompts of about
  the same length share a forward pass.
- A decode step mostly reads the weights: 8 rows take ~1.6 times as long as one. The KV cache
  (`_Rows`) has spare columns: a step writes its column in place, where transformers'
  DynamicCache copies the whole cache (torch.cat) per layer per step; a leaving row is replaced
  by the last row instead of copying all the others. Rows whose lengths differ too much decode
  in separate passes (buckets), so that short rows are not padded to a long prompt's length.
- Sampling works on the [rows, vocabulary] logits: the repetition penalty is one gather and one
  scatter for all rows, and nucleus sampling sorts only the most likely tokens (`_nucleus`),
  not the whole vocabulary (which took ~4 ms a row).

transformers' own ContinuousBatchingManager is not used: it shares one generation config across
requests, where each of our replies has its own temperature, top_p, repetition penalty and token
limit.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chat2audio.runtime.cores import CoreShare
from chat2audio.runtime.int8_weights import decode_steps
from chat2audio.runtime.threads import END, Handover
from llm.base import ChatMessage, GenerationOptions, LLMError, TextPiece, chat_template_ids
from llm.stops import ReplyText

log = logging.getLogger(__name__)


# A forward pass costs about as much as this many prompt tokens on top of its own tokens (the
# weights are read once more), so a shared prompt prefix shorter than this is recomputed per
# reply, and newcomers share a pass even if that pads their prompts by a few tokens.
PASS_COST_TOKENS = 32
MIN_SHARED_PREFIX = PASS_COST_TOKENS
# After each decode step, newcomers' prompts may take about this share of a decode step's time,
# or more while the running replies still take RUNNING_STEPS_PER_S: the running replies keep at
# least about half their pace however long a newcomer's prompt (one pass over a 3 KB prompt
# stopped them for 7-11 s on a busy 2-core CPU). The time is accounted, not rationed per step:
# a prompt pass may take up to PREFILL_BURST_S, and the steps after it go without prompt passes
# until its time is paid back. Larger admits a long prompt sooner; smaller keeps more of the
# running replies' pace (bench/llm_prefill.py).
PREFILL_SHARE = 1.0
# Speech takes about 3-4 tokens a second (English or Chinese), so at this many steps a second a
# running reply's text still comes twice as fast as its audio plays: a fast model lends prefill
# the steps it takes beyond that (SmolLM2-135M, int8, 4 replies: ~30 steps a second alone).
RUNNING_STEPS_PER_S = 8.0
# The longest a prompt pass is sized to take, which is the longest the running replies wait for
# a step. A pass reads every weight and every earlier token's keys of its prompt whatever its
# length, so small passes are slow: 5.5k tokens in 8-token passes took 132 s beside 4 running
# replies (one pass: 17 s). A quarter second is far under what a listener has buffered.
PREFILL_BURST_S = 0.25
# A prompt pass computes at least this many tokens and at most this many, which bounds its
# activations' memory: newcomers share a pass (their padded own parts) only if it fits.
MIN_PREFILL_CHUNK_TOKENS = 8
PREFILL_CHUNK_TOKENS = 256
# Rows decode in one pass, their caches left-padded to the longest, while the padding is at
# most their real columns or this many columns: a short row never holds a long one's length
# in padding (8 rows beside an 8k-token prompt held ~3 GB), and a few thousand columns cost
# less than a pass of their own.
PADDING_ALLOWANCE_COLUMNS = 2048
# Columns a row-cache grows by when a step runs out of room (one copy per this many steps).
SPARE_COLUMNS = 128
# Nucleus sampling looks at this many most likely tokens first (the whole vocabulary only if
# their probabilities do not add up to top_p).
NUCLEUS_CANDIDATES = 256
# A temperature below this is greedy. It could only change the draw where two logits are within
# about 1e-4 of each other (a gap of 1e-3 divided by 1e-5 leaves the runner-up odds of e^-100),
# which is the rounding noise of the logits themselves; far below it, the scaled logits overflow
# float32 (8e-38 and 1e-320 both gave inf and NaN).
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(eq=False)
class _Reply:
    """One request in the batch; its text goes to `loop` through `pieces`."""

    messages: list[ChatMessage]
    options: GenerationOptions
    handover: Handover
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    text: ReplyText = field(init=False)  # set by `stream`, which knows the tokenizer
    # The distinct tokens of the prompt and reply so far (set and tensor), for the repetition
    # penalty; made at the first penalised sampling.
    seen: set[int] | None = None
    seen_ids: Any = None
    # A seeded reply's own random numbers (None: torch's global generator).
    generator: Any = None

    def add(self, token: int) -> None:
        self.generated.append(token)
        if self.seen is not None and token not in self.seen:
            import torch

            self.seen.add(token)
            self.seen_ids = torch.cat([self.seen_ids, self.seen_ids.new_tensor([token])])


class ContinuousBatcher:
    """Runs every reply of one model on one thread, up to `max_batch` decoding together."""

    def __init__(
        self, model: Any, tokenizer: Any, device: str, *, max_batch: int, eos_ids: set[int], cores: CoreShare | None = None
    ) -> None:
        """`cores` is shared with the other in-process torch engines (GPT-SoVITS): computing at the
        same time, they split the cores instead of oversubscribing them."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.cores = cores or CoreShare()
        self.max_batch = max_batch
        self.eos_ids = eos_ids
        self.tokens_generated = 0
        self._inbox: queue.Queue[_Reply | None] = queue.Queue()
        # Newcomers whose prompts are being computed, first come first served; replaced, never
        # mutated, since `active` reads it from other threads.
        self._prefills: list[_PrefillJob] = []
        # The running rows in groups that decode in one pass each (see `_Rows.accepts`).
        self._buckets: list[_Rows] = []
        # What the last steps took, which sizes the next prompt passes (see `_prefill_some`).
        self._decode_s = 0.0
        self._prefill_token_s: float | None = None
        # Prompt-pass time the running replies owe (positive: may still be spent; negative:
        # spent ahead, paid back over the next steps). See PREFILL_BURST_S.
        self._prefill_allowance_s = 0.0
        self._chunk_tokens = PREFILL_CHUNK_TOKENS
        # The batch thread runs while there is work and ends when there is none (see `_admit`).
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._closed = False

    @property
    def _rows(self) -> list[_Reply]:
        return [reply for bucket in list(self._buckets) for reply in bucket.replies]

    @property
    def active(self) -> int:
        """Replies decoding, being prefilled or waiting to join (a finished or hung-up row is not
        counted, even in the moment before the batch thread drops it)."""
        prefilling = [reply for job in self._prefills for reply in job.replies]
        running = {*self._rows, *prefilling}  # a newcomer is in both while it joins
        return sum(1 for reply in running if not reply.cancelled.is_set()) + self._inbox.qsize()

    @property
    def kv_cache_bytes(self) -> int:
        """Memory held by the running rows' KV caches (padding and spare columns included)."""
        return sum(bucket.nbytes for bucket in list(self._buckets))

    async def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        reply = _Reply(messages, options, Handover())
        reply.text = ReplyText(self.tokenizer, options.stop)
        self._inbox.put(reply)
        self._ensure_thread()
        try:
            async for item in reply.handover.items():
                yield item
        finally:
            reply.cancelled.set()  # the row leaves at the next step

    def close(self) -> None:
        with self._thread_lock:
            self._closed, thread = True, self._thread
        if thread is not None:
            self._inbox.put(None)
            thread.join()

    def _ensure_thread(self) -> None:
        """Start the batch thread unless it runs. It ends whenever it has no work: a thread that
        ran torch keeps a team of OpenMP workers, and while it exists, idle, GPT-SoVITS' decode
        step took 25-30 ms instead of 13-16 (full-size voice, 2 cores; bench/RESULTS.md)."""
        with self._thread_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
                self._thread.start()

    # -- the model's thread ------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while self._admit():
                try:
                    # Running rows take a step, then newcomers' prompts take about as long: a
                    # long prompt slows the running replies down for a while, it never stops them.
                    with self.cores.computing():
                        self._step()
                        self._prefill_some()
                except Exception:  # a failed step fails its replies, never the thread
                    log.exception("LLM decode step failed")
                    self._fail_all(LLMError("the LLM failed while writing the reply; see the server log", status=500))

    def _fail_all(self, error: LLMError) -> None:
        for reply in [*self._rows, *(reply for job in self._prefills for reply in job.replies)]:
            if not reply.cancelled.is_set():
                _fail(reply, error)
        self._buckets, self._prefills = [], []

    def _admit(self) -> bool:
        """Let every waiting newcomer in and plan its prefill; False once closed, or when there is
        nothing to do (the thread then ends: see `_ensure_thread`)."""
        import torch

        taken = len(self._rows) + sum(len(job.replies) for job in self._prefills)
        newcomers: list[_Reply] = []
        open_ = True
        while taken + len(newcomers) < self.max_batch:
            try:
                reply = self._inbox.get_nowait()
            except queue.Empty:
                if taken or newcomers:
                    break
                with self._thread_lock:  # idle: end, unless a newcomer came meanwhile
                    if self._inbox.empty():
                        self._thread = None
                        return False
                continue
            if reply is None:
                open_ = False
                break
            if not reply.cancelled.is_set():
                newcomers.append(reply)
        if not open_:
            return False
        readable = []
        for reply in newcomers:
            try:
                reply.prompt = chat_template_ids(self.tokenizer, reply.messages)
                if reply.options.seed is not None:
                    reply.generator = torch.Generator(self.device).manual_seed(torch_seed(reply.options.seed))
                readable.append(reply)
            except Exception:
                log.exception("LLM prompt failed")
                _fail(reply, LLMError("the LLM failed to read the prompt; see the server log", status=500))
        self._prefills = [*self._prefills, *(self._job(group) for group in _plan_prefill(readable))]
        return True

    def _job(self, group: list[_Reply]) -> _PrefillJob:
        return _PrefillJob(group, self._prefill_passes(group))

    def _prefill_some(self) -> None:
        """Newcomers' prompt passes, first come first served, while the prompt-pass time the
        running replies lend (about PREFILL_SHARE of each decode step, see `_prefill_budget_s`)
        is not spent; no limit while nothing decodes. A newcomer whose prompt is done joins the
        running rows."""
        if not self._prefills:
            self._prefill_allowance_s = 0.0
            return
        lent_s = _prefill_budget_s(self._decode_s)
        self._prefill_allowance_s = min(PREFILL_BURST_S, self._prefill_allowance_s + lent_s)
        while self._prefills:
            unlimited = not self._buckets or lent_s == math.inf
            if not unlimited and self._prefill_allowance_s <= 0:
                break
            self._chunk_tokens = self._chunk_for(math.inf if unlimited else PREFILL_BURST_S)
            job = self._prefills[0]
            if all(reply.cancelled.is_set() for reply in job.replies):  # nobody waits for it
                self._prefills = self._prefills[1:]
                continue
            started = time.perf_counter()
            try:
                with decode_steps(False):  # a one-token prompt pass computes as a longer one would
                    tokens = next(job.passes)
                self._timed_prefill(tokens, time.perf_counter() - started)
                self._spend(started, unlimited)
                continue
            except StopIteration as done:
                prefill: _Prefill = done.value
            except Exception:
                log.exception("LLM prefill failed")
                # Each newcomer alone, so that only a reply at fault fails (or all of them, if
                # the model is at fault).
                alone = [self._job([reply]) for reply in job.replies] if len(job.replies) > 1 else []
                self._prefills = [*alone, *self._prefills[1:]]
                if not alone:
                    _fail(job.replies[0], LLMError("the LLM failed to read the prompt; see the server log", status=500))
                self._spend(started, unlimited)
                continue
            self._timed_prefill(prefill.last_pass_tokens, time.perf_counter() - started)
            self._prefills = self._prefills[1:]
            self._join(prefill)
            self._spend(started, unlimited)

    def _spend(self, started: float, unlimited: bool) -> None:
        """Charge a prompt pass that began at `started` to the running replies (if any waited)."""
        if not unlimited:
            self._prefill_allowance_s -= time.perf_counter() - started

    def _chunk_for(self, budget_s: float) -> int:
        """The prompt tokens a pass may compute in `budget_s`, as prefill has gone so far."""
        if budget_s == math.inf:
            return PREFILL_CHUNK_TOKENS
        if self._prefill_token_s is None:
            return MIN_PREFILL_CHUNK_TOKENS
        return int(min(PREFILL_CHUNK_TOKENS, max(MIN_PREFILL_CHUNK_TOKENS, budget_s / self._prefill_token_s)))

    def _timed_prefill(self, tokens: int, seconds: float) -> None:
        # Shorter passes would overstate a token's cost (a pass's own overhead dominates them).
        if tokens >= MIN_PREFILL_CHUNK_TOKENS:
            self._prefill_token_s = _smoothed(self._prefill_token_s, seconds / tokens)

    def _join(self, prefill: _Prefill) -> None:
        """Add prefilled newcomers to the running rows and give each its first token."""
        try:
            # Each row to the bucket it pads least, if any accepts it (else, with the rest of its
            # group, to a new one: a group's own parts differ by less than a pass); then one copy
            # of each bucket that grows.
            placed: dict[int, list[int]] = {}
            for i, row in enumerate(prefill.rows):
                length = row[0][0].shape[1]
                fitting = [b for b, bucket in enumerate(self._buckets) if bucket.accepts(length)]
                target = min(fitting, key=lambda b: self._buckets[b].padding_with(length), default=-1)
                placed.setdefault(target, []).append(i)
            buckets = list(self._buckets)
            for target, rows in placed.items():
                joined = _Rows.gather(
                    buckets[target] if target >= 0 else None,
                    [prefill.replies[i] for i in rows], [prefill.rows[i] for i in rows],
                )
                if target >= 0:
                    buckets[target] = joined
                else:
                    buckets.append(joined)
            self._buckets = buckets
            for reply, token in zip(prefill.replies, sample_next(prefill.logits, prefill.replies)):
                self._take(reply, token)
        except Exception:  # the newcomers fail; the running rows go on
            log.exception("LLM prefill failed")
            for reply in prefill.replies:
                if not reply.cancelled.is_set():
                    _fail(reply, LLMError("the LLM failed to read the prompt; see the server log", status=500))

    def _prefill_passes(self, group: list[_Reply]) -> Generator[int, None, _Prefill]:
        """The group's prompts, one forward pass per `next` (yielding the tokens it computed),
        returning each one's KV cache and first logits.

        The prefix the group shares is copied from a running row that holds it, else computed
        once, in passes as long as `_prefill_some` allows; then each prompt's own part takes one
        pass, right-padded (no mask needed, as every real token only looks back at real tokens).
        A lone prompt is all prefix but the part that its last pass computes."""
        from transformers import DynamicCache

        alone = len(group) == 1
        first = group[0].prompt
        shared = 0 if alone else _shared_prefix([reply.prompt for reply in group])
        # Read in the same `next` as the first pass (which copies it): a running row can move.
        donor, row, copied = self._prefix_donor(first, limit=len(first) - 1 if alone else shared)
        cache = DynamicCache(ddp_cache_data=donor.prefix(row, copied)) if donor is not None else DynamicCache()
        start = copied
        # Chunks as `_prefill_some` sizes them; a lone prompt's last chunk is its last pass.
        while start < (shared if not alone else len(first) - self._chunk_tokens):
            end = min(start + self._chunk_tokens, shared if not alone else len(first) - 1)
            self.model(
                input_ids=self._tensor([first[start:end]]), position_ids=self._positions(start, end - start, 1),
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            )
            yield end - start
            start = end
        if alone:
            shared = start
        if not alone and shared:
            cache.batch_repeat_interleave(len(group))
        rests = [reply.prompt[shared:] for reply in group]
        width = max(len(rest) for rest in rests)
        # The logits of each row's last prompt token, and only those: one column per distinct length.
        last_columns = sorted({len(rest) - 1 for rest in rests})
        out = self.model(
            input_ids=self._tensor([rest + [0] * (width - len(rest)) for rest in rests]),
            position_ids=self._positions(shared, width, len(group)),
            past_key_values=cache, use_cache=True, logits_to_keep=self._tensor(last_columns),
        )
        logits = out.logits[range(len(group)), [last_columns.index(len(rest) - 1) for rest in rests]]
        rows = [
            [(layer.keys[i, :, : len(reply.prompt)], layer.values[i, :, : len(reply.prompt)]) for layer in cache.layers]
            for i, reply in enumerate(group)
        ]
        return _Prefill(group, rows, logits, last_pass_tokens=len(group) * width)

    def _prefix_donor(self, prompt: list[int], limit: int) -> tuple[_Rows | None, int, int]:
        """The running row whose prompt shares the longest prefix with `prompt` (at most `limit`
        tokens, and none under MIN_SHARED_PREFIX): its bucket, its row there, and that length."""
        best: tuple[_Rows | None, int, int] = (None, 0, 0)
        for bucket in self._buckets:
            row, length = bucket.prefix_donor(prompt, limit)
            if length > best[2]:
                best = (bucket, row, length)
        return best

    def _step(self) -> None:
        """One token for every running row: a forward pass per bucket, then each row sampled on
        its own. A bucket whose pass fails fails its rows; the other buckets go on."""
        import torch

        self._prune()
        if not self._buckets:
            return
        started = time.perf_counter()
        replies, logits = [], []
        for bucket in self._buckets:
            try:
                last_tokens = self._tensor([[reply.generated[-1]] for reply in bucket.replies])
                with decode_steps():
                    logits.append(bucket.decode(self.model, last_tokens))
                replies += bucket.replies
            except Exception:
                log.exception("LLM decode step failed")
                for reply in bucket.replies:
                    _fail(reply, LLMError("the LLM failed while writing the reply; see the server log", status=500))
        if replies:
            for reply, token in zip(replies, sample_next(torch.cat(logits), replies)):
                if not reply.cancelled.is_set():
                    self._take(reply, token)
        self._decode_s = _smoothed(self._decode_s or None, time.perf_counter() - started)
        self._prune()

    def _prune(self) -> None:
        """Rows that ended or whose client hung up leave the batch (their slots free at once)."""
        for bucket in self._buckets:
            bucket.drop([i for i, reply in enumerate(bucket.replies) if reply.cancelled.is_set()])
        if not all(bucket.replies for bucket in self._buckets):
            self._buckets = [bucket for bucket in self._buckets if bucket.replies]

    def _take(self, reply: _Reply, token: int | None) -> None:
        """Record a sampled token: send new text, finish the reply at its end or limit, or fail
        it alone if it got no token."""
        if token is None:
            _fail(reply, LLMError("the LLM could not pick the reply's next token; see the server log", status=500))
            return
        self.tokens_generated += 1
        ended = token in self.eos_ids
        if not ended:
            reply.add(token)
        limit = len(reply.generated) >= reply.options.max_new_tokens
        if piece := reply.text.add([] if ended else [token], last=ended or limit):
            reply.handover.send(TextPiece(piece))
        if ended or limit or reply.text.stopped:
            cut = limit and not (ended or reply.text.stopped)
            reply.handover.send(TextPiece("", finish_reason="length" if cut else "stop"))
            reply.handover.send(END)
            reply.cancelled.set()  # done: leaves the batch like a hung-up reply

    def _tensor(self, rows: list) -> Any:
        import torch

        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _positions(self, start: int, length: int, rows: int) -> Any:
        import torch

        return torch.arange(start, start + length, device=self.device).expand(rows, length)


def _prefill_budget_s(decode_s: float) -> float:
    """Seconds of prompt passes the running replies lend per decode step of `decode_s`."""
    return max(PREFILL_SHARE * decode_s, 1 / RUNNING_STEPS_PER_S - decode_s)


def _smoothed(average: float | None, value: float) -> float:
    """A running average that follows a change within a few steps and shrugs off one outlier."""
    return value if average is None else 0.7 * average + 0.3 * value


def _fail(reply: _Reply, error: LLMError) -> None:
    reply.handover.send(error)
    reply.handover.send(END)
    reply.cancelled.set()  # done: leaves the batch (if it is in) like a hung-up reply


@dataclass
class _Prefill:
    """Newcomers after their prompt's forward passes: each one's KV cache ([heads, prompt, dim]
    per layer) and the logits of its first token."""

    replies: list[_Reply]
    rows: list[list[tuple[Any, Any]]]
    logits: Any
    last_pass_tokens: int


@dataclass
class _PrefillJob:
    """Newcomers prefilled together, and the passes of theirs still to run."""

    replies: list[_Reply]
    passes: Generator[int, None, _Prefill]


class _Rows:
    """Running rows that decode in one pass (a bucket), their KV cache left-padded so that every
    row ends at the same column.

    Per layer, keys and values live in buffers [rows, heads, columns + spare, dim]; `cache` is
    a transformers Cache over them whose layers write a step's column in place. `starts[i]` is
    row i's first real column: columns before it are padding, masked out (and zero, or a former
    row's values, never NaN: a masked column's weight is 0, and 0 * NaN would be NaN)."""

    def __init__(self, replies: list[_Reply], buffers: list[tuple[Any, Any]], length: int, starts: list[int]) -> None:
        from transformers.cache_utils import Cache

        self.replies, self.starts = replies, starts
        self.cache = Cache(layers=[_in_place_layer_class()(keys, values, length) for keys, values in buffers])

    @property
    def length(self) -> int:
        return self.cache.layers[0].length

    @property
    def nbytes(self) -> int:
        return sum(layer.key_buffer.nbytes + layer.value_buffer.nbytes for layer in self.cache.layers)

    def padding_with(self, length: int) -> int:
        """The padding columns (all rows together) with a row of `length` columns added."""
        longest = max(self.length, length)
        return longest * (len(self.replies) + 1) - self._real_columns(length)

    def accepts(self, length: int) -> bool:
        """Whether a row of `length` columns may join (see PADDING_ALLOWANCE_COLUMNS)."""
        return self.padding_with(length) <= max(self._real_columns(length), PADDING_ALLOWANCE_COLUMNS)

    def _real_columns(self, added: int) -> int:
        return sum(self.length - start for start in self.starts) + added

    @classmethod
    def gather(cls, batch: _Rows | None, replies: list[_Reply], rows: list[list[tuple[Any, Any]]]) -> _Rows:
        """`batch` (if any) with these rows added: one copy of the whole cache, done when
        newcomers join, so that steps need none."""
        import torch

        old_rows = len(batch.replies) if batch else 0
        length = max([batch.length if batch else 0, *(row[0][0].shape[1] for row in rows)])
        buffers = []
        for layer, parts in enumerate(zip(*rows)):
            heads, _, dim = parts[0][0].shape
            like = parts[0][0]
            shape = (old_rows + len(rows), heads, length + SPARE_COLUMNS, dim)
            keys = torch.zeros(shape, dtype=like.dtype, device=like.device)
            values = torch.zeros_like(keys)
            if batch:
                old = batch.cache.layers[layer]
                keys[:old_rows, :, length - old.length : length] = old.keys
                values[:old_rows, :, length - old.length : length] = old.values
            for i, (row_keys, row_values) in enumerate(parts, start=old_rows):
                keys[i, :, length - row_keys.shape[1] : length] = row_keys
                values[i, :, length - row_values.shape[1] : length] = row_values
            buffers.append((keys, values))
        starts = [start + length - batch.length for start in batch.starts] if batch else []
        starts += [length - row[0][0].shape[1] for row in rows]
        return cls([*(batch.replies if batch else []), *replies], buffers, length, starts)

    def decode(self, model: Any, last_tokens: Any) -> Any:
        """One step for every row: logits of each row's next token."""
        import torch

        starts = torch.tensor(self.starts, device=last_tokens.device)
        positions = (self.length - starts).unsqueeze(1)
        mask = None  # rows all start at column 0 (say, a batch of one): nothing to mask
        if any(self.starts):
            mask = torch.arange(self.length + 1, device=starts.device).unsqueeze(0) >= starts.unsqueeze(1)
        out = model(
            input_ids=last_tokens, attention_mask=mask, position_ids=positions,
            past_key_values=self.cache, use_cache=True,
        )
        return out.logits[:, -1]

    def drop(self, rows: list[int]) -> None:
        """Remove these rows: the last row moves into each freed one (a copy of one row, not of
        the rest), then padding columns that no remaining row needs are cut off (a view)."""
        for row in sorted(rows, reverse=True):
            last = len(self.replies) - 1
            if row != last:
                self.replies[row], self.starts[row] = self.replies[last], self.starts[last]
                for layer in self.cache.layers:
                    layer.move_row(last, row)
            self.replies.pop()
            self.starts.pop()
            for layer in self.cache.layers:
                layer.keep_rows(last)
        if self.replies and (first := min(self.starts)) > 0:
            self.starts = [start - first for start in self.starts]
            for layer in self.cache.layers:
                layer.drop_columns(first)

    def prefix_donor(self, prompt: list[int], limit: int) -> tuple[int, int]:
        """The row whose prompt shares the longest prefix with `prompt` (at most `limit` tokens):
        its index and that length."""
        best, length = 0, 0
        for i, reply in enumerate(self.replies):
            shared = min(_shared_prefix([reply.prompt, prompt]), limit)
            if shared > length:
                best, length = i, shared
        return (best, length) if length >= MIN_SHARED_PREFIX else (0, 0)

    def prefix(self, row: int, length: int) -> list[tuple[Any, Any]]:
        """Row `row`'s first `length` prompt tokens' keys and values, [1, heads, length, dim] per layer."""
        columns = slice(self.starts[row], self.starts[row] + length)
        rows = slice(row, row + 1)
        return [(layer.keys[rows, :, columns], layer.values[rows, :, columns]) for layer in self.cache.layers]


@functools.cache
def _in_place_layer_class() -> type:
    """Built on first use: transformers is imported by the model's thread, as everywhere in llm/."""
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """A DynamicLayer over buffers with spare columns: `update` writes the new columns in
        place and grows the buffers by SPARE_COLUMNS when full, instead of copying the whole
        cache on every call. `keys` / `values` are views of the columns in use."""

        def __init__(self, keys: Any, values: Any, length: int) -> None:
            super().__init__()
            self.key_buffer, self.value_buffer, self.length = keys, values, length
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self._expose()

        def _expose(self) -> None:
            self.keys = self.key_buffer[:, :, : self.length]
            self.values = self.value_buffer[:, :, : self.length]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch.nn.functional as F

            end = self.length + key_states.shape[-2]
            if end > self.key_buffer.shape[2]:
                grow = [0, 0, 0, end - self.key_buffer.shape[2] + SPARE_COLUMNS]
                self.key_buffer, self.value_buffer = F.pad(self.key_buffer, grow), F.pad(self.value_buffer, grow)
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def move_row(self, source: int, target: int) -> None:
            self.key_buffer[target] = self.key_buffer[source]
            self.value_buffer[target] = self.value_buffer[source]

        def keep_rows(self, count: int) -> None:
            self.key_buffer, self.value_buffer = self.key_buffer[:count], self.value_buffer[:count]
            self._expose()

        def drop_columns(self, count: int) -> None:
            self.key_buffer, self.value_buffer = self.key_buffer[:, :, count:], self.value_buffer[:, :, count:]
            self.length -= count
            self._expose()

    return InPlaceLayer


def _plan_prefill(replies: list[_Reply]) -> list[list[_Reply]]:
    """Newcomers in groups that each take one forward pass (after their shared prefix's, if
    any): a newcomer joins the group that it makes least costlier, if that costs less than a
    pass of its own. A group pays its shared prefix once, and pads every prompt's own part to
    its longest. Newcomers are placed in prompt order, so that those sharing a prefix meet."""
    groups: list[list[_Reply]] = []
    for reply in sorted(replies, key=lambda reply: reply.prompt):
        best, best_added = None, _prefill_cost([reply.prompt])
        for group in groups:
            prompts = [*(member.prompt for member in group), reply.prompt]
            added = _prefill_cost(prompts) - _prefill_cost(prompts[:-1])
            shared = _shared_prefix(prompts)
            fits = len(prompts) * max(len(p) - shared for p in prompts) <= PREFILL_CHUNK_TOKENS
            if added < best_added and fits:
                best, best_added = group, added
        if best is None:
            groups.append([reply])
        else:
            best.append(reply)
    return groups


def _prefill_cost(prompts: Sequence[list[int]]) -> int:
    """What prefilling these prompts together costs, in prompt tokens (each pass counted as
    PASS_COST_TOKENS more)."""
    shared = _shared_prefix(prompts) if len(prompts) > 1 else 0
    prefix_pass = shared + PASS_COST_TOKENS if shared else 0
    return prefix_pass + PASS_COST_TOKENS + len(prompts) * max(len(p) - shared for p in prompts)


def _shared_prefix(prompts: Sequence[list[int]]) -> int:
    """Tokens at the start of every prompt, leaving each at least one token of its own (whose
    logits give its first reply token); 0 if fewer than MIN_SHARED_PREFIX."""
    length = min(len(os.path.commonprefix(list(prompts))), min(len(p) for p in prompts) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def sample_next(logits: Any, replies: Sequence[_Reply]) -> list[int | None]:
    """The next token of each row ([rows, vocabulary] logits), each under its reply's own
    settings: repetition penalty over what it has seen, then greedy (temperature under
    GREEDY_BELOW_TEMPERATURE) or temperature + nucleus (top_p) sampling.

    Each row is sampled on its own, so that a row that yields no token (no finite score, or a
    draw that fails) gets None and ends alone: the other rows of the batch go on."""
    import torch

    scores = logits.float()
    _penalise_repetitions(scores, replies)
    # NaN is no candidate and +inf the best one, so that one broken score neither wins the argmax
    # nor poisons a row's softmax; a row left with no finite score has no next token.
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(scores.dtype).max)
    tokens: list[int | None] = scores.argmax(-1).tolist()  # argmax, as generate() picks greedily
    usable = torch.isfinite(scores.amax(-1)).tolist()
    for i, reply in enumerate(replies):
        if not usable[i]:
            log.error("LLM row has no finite score; ending that reply")
            tokens[i] = None
        elif _samples(reply.options):
            try:
                tokens[i] = _draw(scores[i], reply.options, reply.generator)
            except Exception:
                log.exception("LLM sampling failed for one reply; ending that reply")
                tokens[i] = None
    return tokens


def _samples(options: GenerationOptions) -> bool:
    """Whether a reply samples (False for greedy, and for a NaN temperature)."""
    return options.temperature >= GREEDY_BELOW_TEMPERATURE


def _penalise_repetitions(scores: Any, replies: Sequence[_Reply]) -> None:
    """Each row's scores of the tokens its reply has seen, divided by its repetition penalty
    (multiplied, where negative), as transformers' RepetitionPenaltyLogitsProcessor does: one
    gather and one scatter over all rows' seen tokens."""
    import torch

    rows = [i for i, reply in enumerate(replies) if reply.options.repetition_penalty != 1.0]
    if not rows:
        return
    for i in rows:
        if replies[i].seen is None:
            replies[i].seen = set(replies[i].prompt) | set(replies[i].generated)
            replies[i].seen_ids = torch.tensor(sorted(replies[i].seen), dtype=torch.long, device=scores.device)
    columns = torch.cat([replies[i].seen_ids for i in rows])
    counts = torch.tensor([len(replies[i].seen_ids) for i in rows], device=scores.device)
    row_index = torch.tensor(rows, device=scores.device).repeat_interleave(counts)
    penalties = [replies[i].options.repetition_penalty for i in rows]
    penalty = torch.tensor(penalties, device=scores.device).repeat_interleave(counts)
    picked = scores[row_index, columns]
    scores[row_index, columns] = torch.where(picked < 0, picked * penalty, picked / penalty)


def _draw(scores: Any, options: GenerationOptions, generator: Any) -> int:
    """One token drawn from a row's finite-best scores; `generator` (None: torch's global one)
    makes a seeded reply's draws its own, whatever else shares the batch."""
    import torch

    # Scaled from the row's best score, so that no temperature overflows: the best token weighs
    # exp(0) = 1 and the others less; -inf / inf (an infinite temperature) is NaN: no candidate.
    scaled = ((scores - scores.max()) / options.temperature).nan_to_num(nan=float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if options.top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    candidates, ids = _nucleus(probs, options.top_p)
    return int(ids[torch.multinomial(candidates, 1, generator=generator)])


def _nucleus(probs: Any, top_p: float) -> tuple[Any, Any]:
    """The smallest set of most likely tokens whose probabilities reach top_p (weights, ids).

    A token is in it if the tokens more likely than it add up to at most top_p. Once the top k
    add up to more than top_p, no token outside them is, so only the top k need sorting."""
    count = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    while True:
        top, ids = probs.topk(count)
        if count == probs.shape[-1] or float(top.sum()) > top_p:
            break
        count = min(count * 8, probs.shape[-1])
    top[top.cumsum(0) - top > top_p] = 0.0
    return top, ids


def torch_seed(seed: int) -> int:
    """Any integer as a torch seed (which must fit in 64 bits)."""
    return seed % 2**64

