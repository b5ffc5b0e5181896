"""The generation guard: how many GPT tokens a sentence may take, bounded by its text and the context."""

from __future__ import annotations

import logging

from tts.base import TTSError

log = logging.getLogger(__name__)

SEMANTIC_HZ = 25  # GPT tokens per second of speech


class GenerationGuard:
    """A random or confused GPT may never say EOS: each sentence gets a budget of tokens from its
    length (`min_tokens + tokens_per_phone × phonemes`), within what the context has room for."""

    MIN_STEPS = 12  # gsv_tts' GPT forbids EOS for its first 10 steps: never end a sentence before then

    def __init__(self, *, min_tokens: int, tokens_per_phone: float, max_context: int) -> None:
        self.min_tokens = min_tokens
        self.tokens_per_phone = tokens_per_phone
        self.max_context = max_context

    def token_limit(self, *, phones: int, ref_phones: int, prompt_tokens: int) -> int:
        """The most tokens a sentence may take. `phones` counts the reference's and the sentence's
        phonemes (the GPT reads both), `prompt_tokens` the reference's semantic tokens."""
        room = self.max_context - phones - prompt_tokens - 1
        if room < self.MIN_STEPS:
            raise TTSError(
                f"sentence too long for GPT-SoVITS ({phones - ref_phones} phonemes; the context holds "
                f"{self.max_context} tokens with the reference clip): split it or use a shorter ref_audio",
                status=422,
            )
        wanted = max(self.MIN_STEPS, round(self.min_tokens + self.tokens_per_phone * (phones - ref_phones)))
        if wanted > room:
            log.warning("GPT-SoVITS context caps this sentence at %d tokens (%.1f s of speech)", room, room / SEMANTIC_HZ)
        return min(room, wanted)
