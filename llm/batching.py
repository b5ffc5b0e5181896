"""Continuous batching for an in-process causal LM: concurrent replies share decode steps.

One thread owns the model. Each step it lets newcomers in (each prefilled alone, then merged
into the running batch's KV cache, left-padded to a common length), runs one forward pass for
every running reply, samples each row with that reply's own settings, and hands each reply its
new text. A reply leaves at its end, its token limit, or the step after its client hung up: its
slot is free at once. Newcomers are let in before the next step, since a new reply has no audio
buffered at its client while the running ones do.

transformers' own ContinuousBatchingManager is not used: (see the closing note of the change
that added this file for the measurements) it shares one generation config across requests,
where each of our replies has its own temperature, top_p, repetition penalty and token limit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from llm.base import ChatMessage, GenerationOptions, LLMError, TextPiece

log = logging.getLogger(__name__)

_END = object()


@dataclass(eq=False)
class _Reply:
    """One request in the batch; its text goes to `loop` through `pieces`."""

    messages: list[ChatMessage]
    options: GenerationOptions
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0

    def send(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)


class ContinuousBatcher:
    """Runs every reply of one model on one thread, up to `max_batch` decoding together."""

    def __init__(self, model: Any, tokenizer: Any, device: str, *, max_batch: int, eos_ids: set[int]) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch = max_batch
        self.eos_ids = eos_ids
        self.tokens_generated = 0
        self._inbox: queue.Queue[_Reply | None] = queue.Queue()
        self._rows: list[_Reply] = []
        self._batch: _Batch | None = None
        self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Replies decoding or waiting to join (a finished or hung-up row is not counted, even
        in the moment before the batch thread drops it)."""
        return sum(1 for reply in list(self._rows) if not reply.cancelled.is_set()) + self._inbox.qsize()

    async def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        reply = _Reply(messages, options, asyncio.get_running_loop(), asyncio.Queue())
        self._inbox.put(reply)
        try:
            while (item := await reply.pieces.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reply.cancelled.set()  # the row leaves at the next step

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    # -- the model's thread ------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while self._admit():
                if not self._rows:
                    continue
                try:
                    self._step()
                except Exception:  # a failed step fails its replies, never the thread
                    log.exception("LLM decode step failed")
                    self._fail_all(LLMError("the LLM failed while writing the reply; see the server log", status=500))

    def _fail_all(self, error: LLMError) -> None:
        for reply in self._rows:
            if not reply.cancelled.is_set():
                reply.send(error)
                reply.send(_END)
        self._rows, self._batch = [], None

    def _admit(self) -> bool:
        """Let newcomers in (blocking while idle); False once closed."""
        while len(self._rows) < self.max_batch:
            try:
                reply = self._inbox.get(block=not self._rows)
            except queue.Empty:
                return True
            if reply is None:
                return False
            if reply.cancelled.is_set():
                continue
            try:
                self._join(reply)
            except Exception:  # this reply's fault (or the model's): tell it, keep the rest
                log.exception("LLM prefill failed")
                reply.send(LLMError("the LLM failed to read the prompt; see the server log", status=500))
                reply.send(_END)
        return True

    def _join(self, reply: _Reply) -> None:
        from transformers import DynamicCache

        reply.prompt = _chat_ids(self.tokenizer, reply.messages)
        ids = self._tensor([reply.prompt])
        cache = DynamicCache()
        logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        row = _Batch(cache, ids.new_ones(ids.shape))
        self._batch = row if self._batch is None else self._batch.merge(row)
        self._rows.append(reply)
        self._take(reply, int(sample(logits[0], reply.prompt, reply.generated, reply.options)))

    def _step(self) -> None:
        self._prune()
        if not self._rows:
            return
        assert self._batch is not None
        last = self._tensor([[reply.generated[-1]] for reply in self._rows])
        logits = self._batch.decode(self.model, last)
        for index, reply in enumerate(self._rows):
            if not reply.cancelled.is_set():
                self._take(reply, int(sample(logits[index], reply.prompt, reply.generated, reply.options)))
        self._prune()

    def _prune(self) -> None:
        """Rows that ended or whose client hung up leave the batch (their slots free at once)."""
        leaving = [i for i, reply in enumerate(self._rows) if reply.cancelled.is_set()]
        if leaving and self._batch is not None:
            self._rows = [reply for reply in self._rows if not reply.cancelled.is_set()]
            self._batch = self._batch.without(leaving) if self._rows else None

    def _take(self, reply: _Reply, token: int) -> None:
        """Record a sampled token: send new text, finish the reply at its end or limit."""
        self.tokens_generated += 1
        ended = token in self.eos_ids
        if not ended:
            reply.generated.append(token)
        limit = len(reply.generated) >= reply.options.max_new_tokens
        text = self.tokenizer.decode(reply.generated, skip_special_tokens=True)
        # Hold back a character still being built from several tokens (U+FFFD), unless done.
        if len(text) > reply.sent_chars and (ended or limit or not text.endswith("\ufffd")):
            reply.send(TextPiece(text[reply.sent_chars :]))
            reply.sent_chars = len(text)
        if ended or limit:
            reply.send(TextPiece("", finish_reason="length" if limit and not ended else "stop"))
            reply.send(_END)
            reply.cancelled.set()  # done: leaves the batch like a hung-up reply

    def _tensor(self, rows: list[list[int]]) -> Any:
        import torch

        return torch.tensor(rows, dtype=torch.long, device=self.device)


class _Batch:
    """The running rows' KV cache and attention mask (left-padded to one length)."""

    def __init__(self, cache: Any, mask: Any) -> None:
        self.cache, self.mask = cache, mask

    def decode(self, model: Any, last_tokens: Any) -> Any:
        """One step for every row: logits of each row's next token."""
        positions = self.mask.sum(-1, keepdim=True)
        self.mask = _cat(self.mask, self.mask.new_ones((self.mask.shape[0], 1)))
        out = model(
            input_ids=last_tokens, attention_mask=self.mask, position_ids=positions,
            past_key_values=self.cache, use_cache=True,
        )
        return out.logits[:, -1]

    def merge(self, other: _Batch) -> _Batch:
        """This batch with `other`'s rows appended, both left-padded to the longer length."""
        from transformers import DynamicCache

        length = max(self.mask.shape[1], other.mask.shape[1])
        layers = [
            (_cat0(_left_pad(a.keys, length), _left_pad(b.keys, length)),
             _cat0(_left_pad(a.values, length), _left_pad(b.values, length)))
            for a, b in zip(self.cache.layers, other.cache.layers)
        ]
        mask = _cat0(_left_pad(self.mask, length, dim=1), _left_pad(other.mask, length, dim=1))
        return _Batch(DynamicCache(ddp_cache_data=layers), mask)

    def without(self, rows: list[int]) -> _Batch:
        """The batch without these rows, and without the padding columns no remaining row needs."""
        import torch

        keep = [i for i in range(self.mask.shape[0]) if i not in set(rows)]
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])
        self.cache.batch_select_indices(index)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        return _Batch(self.cache, mask[:, first:])


def sample(logits: Any, prompt: list[int], generated: list[int], options: GenerationOptions) -> int:
    """The next token of one reply under its own settings: repetition penalty over what it has
    seen, then greedy (temperature 0) or temperature + nucleus (top_p) sampling."""
    import torch

    scores = logits.float()
    if options.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt) | set(generated)), device=scores.device)
        picked = scores[seen]
        scores[seen] = torch.where(picked < 0, picked * options.repetition_penalty, picked / options.repetition_penalty)
    if options.temperature <= 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > options.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1))


def _chat_ids(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _left_pad(tensor: Any, length: int, dim: int = 2) -> Any:
    import torch.nn.functional as F

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)


def _cat(a: Any, b: Any) -> Any:
    import torch

    return torch.cat([a, b], dim=1)


def _cat0(a: Any, b: Any) -> Any:
    import torch

    return torch.cat([a, b], dim=0)
