"""The reply pipeline on deterministic backends: stages overlap, order holds, and closing the
stream stops the LLM and the TTS."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import numpy as np
import pytest

from chat2audio.pipeline import AudioChunk, ReplyFinished, SentenceDone, Staging, speak_reply
from llm.base import ChatMessage, GenerationOptions, LLMError, TextPiece
from llm.scripted import ScriptedLLM
from tts.scripted import SAMPLE_RATE, ScriptedTTS, ToneVoice

SCRIPT = "The harbour is close by. Follow the lanterns down the hill. The ships wait there for us."
SENTENCES = ["The harbour is close by.", "Follow the lanterns down the hill.", "The ships wait there for us."]


def run(llm, tts, text=SCRIPT, options=GenerationOptions(), **kwargs):
    return speak_reply(llm, tts, ToneVoice(), [ChatMessage("user", text)], options, **kwargs)


async def whole(stream) -> tuple[list[AudioChunk | SentenceDone], ReplyFinished]:
    """Every audio chunk and sentence, and the ReplyFinished that must come last."""
    items = [item async for item in stream]
    *chunks, finished = items
    assert isinstance(finished, ReplyFinished) and all(isinstance(c, AudioChunk | SentenceDone) for c in chunks)
    return chunks, finished


async def test_sentences_are_spoken_in_order_with_their_full_audio():
    tts = ScriptedTTS(rtf=0.0)
    chunks, reply = await whole(run(ScriptedLLM(token_delay_s=0.0), tts))
    done = [c for c in chunks if isinstance(c, SentenceDone)]
    assert [c.text for c in done] == SENTENCES
    audio = np.concatenate([c.audio for c in chunks if isinstance(c, AudioChunk)])
    assert np.array_equal(np.concatenate([c.audio for c in done]), audio)  # each sentence carries its chunks
    assert audio.size == sum(int(tts.duration_s(s) * SAMPLE_RATE) for s in SENTENCES)
    assert reply.raw_text == SCRIPT and list(reply.spoken) == SENTENCES and reply.finish_reason == "stop"


async def test_first_audio_leaves_while_the_llm_is_still_writing():
    llm = ScriptedLLM(token_delay_s=0.03)
    stream = run(llm, ScriptedTTS(rtf=0.05))
    async with aclosing(stream):
        first = await anext(stream)
        assert isinstance(first, AudioChunk) and first.audio.size
        assert llm.active_generations == 1  # the LLM had not finished when audio came out


async def test_synthesis_overlaps_generation():
    # LLM ≈ 22 tokens × 40 ms ≈ 0.9 s; TTS ≈ 0.5 × 5.4 s of audio ≈ 2.7 s. In sequence ≈ 3.6 s.
    llm, tts = ScriptedLLM(token_delay_s=0.04), ScriptedTTS(rtf=0.5)
    started = time.perf_counter()
    _, reply = await whole(run(llm, tts))
    total = time.perf_counter() - started
    tts_total = sum(tts.duration_s(s) for s in SENTENCES) * 0.5
    assert total < reply.llm_done_s + tts_total - 0.3


async def test_closing_the_stream_stops_generation_and_synthesis():
    llm, tts = ScriptedLLM(token_delay_s=0.05), ScriptedTTS(rtf=0.2)
    stream = run(llm, tts, text=SCRIPT * 5)
    async for _ in stream:
        assert llm.active_generations == 1
        break
    await stream.aclose()
    assert llm.active_generations == 0 and tts.active_syntheses == 0


async def test_cancelling_the_consumer_task_stops_everything():
    llm, tts = ScriptedLLM(token_delay_s=0.05), ScriptedTTS(rtf=0.2)
    stream = run(llm, tts, text=SCRIPT * 5)

    async def consume():
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.active_generations == 0 and tts.active_syntheses == 0


async def test_token_limit_trims_the_incomplete_sentence():
    _, reply = await whole(run(ScriptedLLM(token_delay_s=0.0), ScriptedTTS(rtf=0.0), options=GenerationOptions(max_new_tokens=14)))
    assert reply.finish_reason == "length"
    assert list(reply.spoken) == SENTENCES[:1]


async def test_unspeakable_reply_yields_no_audio_and_no_error():
    chunks, reply = await whole(run(ScriptedLLM(token_delay_s=0.0), ScriptedTTS(rtf=0.0), text="😀 (laughs) ... !!"))
    assert chunks == [] and reply.spoken == ()


class FailingLLM(ScriptedLLM):
    async def stream_chat(self, messages, options):
        yield TextPiece("First sentence is fine. ")
        raise LLMError("upstream went away", status=502)


async def test_llm_failure_reaches_the_consumer_after_what_was_already_said():
    seen = []
    with pytest.raises(LLMError, match="upstream went away"):
        async for chunk in run(FailingLLM(), ScriptedTTS(rtf=0.0)):
            seen.append(chunk)
    assert [c.text for c in seen if isinstance(c, SentenceDone)] == ["First sentence is fine."]
    assert isinstance(seen[-1], SentenceDone)


async def test_reply_text_is_cut_to_whole_sentences_when_tokens_ran_out():
    _, reply = await whole(run(ScriptedLLM(token_delay_s=0.0), ScriptedTTS(rtf=0.0), options=GenerationOptions(max_new_tokens=14)))
    assert reply.raw_text.startswith(SENTENCES[0] + " Follow")
    assert reply.text == SENTENCES[0]


SLOW_SCRIPT = (
    "Hello there. The lanterns, which hang along the old harbour wall and glow all through the night, "
    "lead us down to the ships."
)


async def test_a_listener_about_to_run_dry_gets_the_sentence_being_written_cut_at_a_comma():
    # The first sentence plays for ~1 s; the second takes the LLM ~2.5 s to write: a listener
    # would wait in silence unless what is written so far is spoken at its commas.
    spoken = {}
    for by_deadline in (True, False):
        llm = ScriptedLLM(token_delay_s=0.12, first_token_delay_s=0.0)
        chunks, reply = await whole(run(llm, ScriptedTTS(rtf=0.0), text=SLOW_SCRIPT, staging=Staging(by_deadline=by_deadline)))
        spoken[by_deadline] = list(reply.spoken)
        assert " ".join(reply.spoken) == SLOW_SCRIPT  # nothing lost or repeated either way
    assert spoken[False] == ["Hello there.", SLOW_SCRIPT.removeprefix("Hello there. ")]
    # About to run dry: cut at the comma written so far. Once dry with no comma in sight: at a word.
    assert spoken[True][:2] == ["Hello there.", "The lanterns,"] and len(spoken[True]) > 3


async def test_sentences_with_their_separators_make_the_spoken_text():
    # A chat-completions stream sends each sentence as `separator + text`; joined, they must be the reply.
    for script in (SCRIPT, "你好。今天天气很好! Shall we go out? 好的。"):
        chunks, reply = await whole(run(ScriptedLLM(token_delay_s=0.0), ScriptedTTS(rtf=0.0), text=script))
        done = [c for c in chunks if isinstance(c, SentenceDone)]
        assert len(done) > 2 and "".join(c.separator + c.text for c in done) == reply.spoken_text
