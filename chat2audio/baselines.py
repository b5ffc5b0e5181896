"""The benchmarks' baselines, chosen by CHAT2AUDIO_TESTING__PIPELINE_MODE and __TTS_SCHEDULING:
the reply pipeline wrapped, so that `speak_reply` itself knows nothing of them. Never needed to
serve; `bench/` compares the product against them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from chat2audio.pipeline import ReplyItem, Staging, speak_reply
from chat2audio.settings import TestingSettings
from llm.base import ChatMessage, GenerationOptions, ReplyWriter, TextPiece

ReplyPipeline = Callable[..., AsyncIterator[ReplyItem]]


def reply_pipeline(testing: TestingSettings) -> ReplyPipeline:
    """`speak_reply`, or the baseline the settings ask for; chosen once, at start-up."""
    pipeline: ReplyPipeline = speak_reply
    if testing.tts_scheduling == "fifo":
        pipeline = _restaged(pipeline, by_deadline=False)
    if testing.pipeline_mode == "sequential":
        pipeline = _whole_reply_first(_restaged(pipeline, stream_sentences=False, queue_size=0))
    return pipeline


def _restaged(pipeline: ReplyPipeline, **changes: Any) -> ReplyPipeline:
    """`pipeline` with some of each reply's staging replaced: `by_deadline=False` is the path
    before deadline scheduling (every sentence due when submitted, none cut short); `queue_size=0`
    lets every sentence written wait (no bound)."""

    def restaged(llm, tts, voice, messages, options, staging: Staging = Staging(), **kwargs) -> AsyncIterator[ReplyItem]:
        return pipeline(llm, tts, voice, messages, options, replace(staging, **changes), **kwargs)

    return restaged


def _whole_reply_first(pipeline: ReplyPipeline) -> ReplyPipeline:
    """The original system's design: the whole reply is written before its first sentence is
    synthesized (and, restaged, each sentence is synthesized whole)."""

    def sequential(llm, *args, **kwargs) -> AsyncIterator[ReplyItem]:
        return pipeline(WholeReplyFirst(llm), *args, **kwargs)

    return sequential


class WholeReplyFirst:
    """An LLM whose reply arrives in one piece, once all of it is written."""

    def __init__(self, llm: ReplyWriter) -> None:
        self.llm = llm

    async def stream_chat(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[TextPiece]:
        async with aclosing(self.llm.stream_chat(messages, options)) as pieces:
            written = [piece async for piece in pieces]
        finish_reason = next((piece.finish_reason for piece in reversed(written) if piece.finish_reason), None)
        yield TextPiece("".join(piece.text for piece in written), finish_reason)
