"""The generation guard: bounds each GPT pass by the text's length and aborts it on cancellation."""

from __future__ import annotations

import logging
import threading
from typing import Any

from tts.base import TTSError

log = logging.getLogger(__name__)

SEMANTIC_HZ = 25  # GPT tokens per second of speech


class Cancelled(Exception):
    """Raised inside the GPT loop once the consumer has gone."""


class GenerationGuard:
    """Bounds each GPT pass by the text's length and aborts it on cancellation.

    Works through forward hooks on the GPT's own layers, so gsv_tts' loops stay untouched: the text
    embedding runs once per pass (it sees the phonemes), the output layer once per token.
    """

    MIN_STEPS = 12  # gsv_tts forbids EOS for the first 10 steps: never force it before then

    def __init__(self, *, min_tokens: int, tokens_per_phone: float, max_context: int) -> None:
        self.min_tokens = min_tokens
        self.tokens_per_phone = tokens_per_phone
        self.max_context = max_context
        self.ref_phones = 0
        self.prompt_tokens = 0
        self.cancelled: threading.Event | None = None
        self.limit = 0
        self.steps = 0

    def arm(self, *, ref_phones: int, prompt_tokens: int, cancelled: threading.Event) -> None:
        """Before a synthesis: the voice's reference (which the GPT reads first) and its cancel flag."""
        self.ref_phones, self.prompt_tokens, self.cancelled = ref_phones, prompt_tokens, cancelled
        self.steps = 0

    def disarm(self) -> int:
        """After a synthesis: the GPT tokens it generated."""
        self.cancelled = None
        return max(0, self.steps - 1)

    def attach(self, t2s_model: Any) -> list[Any]:
        """Hook a loaded GPT; returns the hook handles, to remove when the GPT is unloaded."""
        eos = int(t2s_model.EOS)

        def on_text(module, args):
            phones = int(args[0].shape[-1])
            room = self.max_context - phones - self.prompt_tokens - 1
            if room < self.MIN_STEPS:
                raise TTSError(
                    f"sentence too long for GPT-SoVITS ({phones - self.ref_phones} phonemes; the context holds "
                    f"{self.max_context} tokens with the reference clip): split it or use a shorter ref_audio",
                    status=422,
                )
            wanted = max(self.MIN_STEPS, round(self.min_tokens + self.tokens_per_phone * (phones - self.ref_phones)))
            if wanted > room:
                log.warning(
                    "GPT-SoVITS context caps this sentence at %d tokens (%.1f s of speech)", room, room / SEMANTIC_HZ
                )
            self.limit = min(room, wanted)
            self.steps = 0

        def on_logits(module, args, output):
            if self.cancelled is not None and self.cancelled.is_set():
                raise Cancelled
            self.steps += 1
            if self.steps > self.limit + 1:  # +1: the prompt pass samples the first token
                forced = output.new_full(output.shape, float("-inf"))
                forced[:, eos] = 0.0
                return forced
            return None

        return [
            t2s_model.ar_text_embedding.register_forward_pre_hook(on_text),
            t2s_model.ar_predict_layer.register_forward_hook(on_logits),
        ]
