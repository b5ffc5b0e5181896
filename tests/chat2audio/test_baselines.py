"""The benchmarks' baselines: the product pipeline unless asked otherwise; the original design
speaks only once the whole reply is written, and says the same sentences."""

from __future__ import annotations

from contextlib import aclosing

from chat2audio.baselines import reply_pipeline
from chat2audio.pipeline import AudioChunk, ReplyFinished, SentenceDone, speak_reply
from chat2audio.settings import TestingSettings as Knobs  # not "Test…": pytest would collect it
from llm.base import ChatMessage, GenerationOptions
from llm.scripted import ScriptedLLM
from tts.scripted import ScriptedTTS, ToneVoice

SCRIPT = "The harbour is close by. Follow the lanterns down the hill. The ships wait there for us."


def test_the_product_pipeline_is_the_default():
    assert reply_pipeline(Knobs()) is speak_reply


async def test_the_sequential_baseline_speaks_once_the_whole_reply_is_written():
    for testing in (Knobs(pipeline_mode="sequential"), Knobs(pipeline_mode="sequential", tts_scheduling="fifo")):
        llm = ScriptedLLM(token_delay_s=0.01)
        stream = reply_pipeline(testing)(llm, ScriptedTTS(rtf=0.0), ToneVoice(), [ChatMessage("user", SCRIPT)], GenerationOptions())
        async with aclosing(stream):
            first = await anext(stream)
            assert isinstance(first, AudioChunk) and llm.active_generations == 0
            items = [first, *[item async for item in stream]]
        assert [item.text for item in items if isinstance(item, SentenceDone)] == [
            "The harbour is close by.", "Follow the lanterns down the hill.", "The ships wait there for us."
        ]
        assert isinstance(items[-1], ReplyFinished) and items[-1].raw_text == SCRIPT
