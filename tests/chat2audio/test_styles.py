"""Styles (moods) in a reply: "[happy]"-style tags switch the voice from the sentence they start,
are neither spoken nor shown, and each sentence says its style, where its audio starts and (for
engines that know) when its words are heard."""

from __future__ import annotations

import numpy as np
import pytest

from chat2audio.audio import MOUTH_FRAME_S, mouth_envelope
from chat2audio.pipeline import SentenceDone, speak_reply, without_style_tags
from chat2audio.splitter import SentenceSplitter
from llm.base import ChatMessage, GenerationOptions
from llm.scripted import ScriptedLLM
from tts.scripted import SAMPLE_RATE, ScriptedTTS, ToneVoice

STYLES = frozenset({"happy", "sad"})


def split(text: str, *, pieces: int = 1, **kwargs) -> list[tuple[str, str | None]]:
    """The sentences of `text` fed in pieces of `pieces` characters, with their styles."""
    splitter = SentenceSplitter(styles=STYLES, **kwargs)
    out = []
    for start in range(0, len(text), pieces):
        out += splitter.feed(text[start : start + pieces])
    out += splitter.finish()
    return [(str(sentence), sentence.style) for sentence in out]


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_a_tag_styles_its_sentence_and_the_ones_after_it(pieces):
    text = "[happy] What a lovely morning it is! The sea is calm. [sad] But the ship has left without us."
    assert split(text, pieces=pieces) == [
        ("What a lovely morning it is!", "happy"),
        ("The sea is calm.", "happy"),
        ("But the ship has left without us.", "sad"),
    ]


def test_before_any_tag_the_reply_has_its_starting_style():
    assert split("Hello there, traveller. [sad] Goodbye now, my friend.") == [
        ("Hello there, traveller.", None), ("Goodbye now, my friend.", "sad"),
    ]
    assert split("Hello there, traveller.", style="sad") == [("Hello there, traveller.", "sad")]


def test_tags_are_read_in_any_case_and_spacing():
    assert split("[ Happy ] Nice to see you again.") == [("Nice to see you again.", "happy")]


def test_an_unknown_tag_is_dropped_and_changes_nothing():
    assert split("[sad] It rained all day long. [furious] The roof leaks again.") == [
        ("It rained all day long.", "sad"), ("The roof leaks again.", "sad"),
    ]


def test_a_tag_inside_a_sentence_ends_the_part_before_it():
    assert split("I thought I had lost it [happy] but here it is, my old map!") == [
        ("I thought I had lost it", None), ("but here it is, my old map!", "happy"),
    ]


def test_without_styles_tags_are_stage_directions():
    splitter = SentenceSplitter()
    sentences = splitter.feed("[happy] Hello there, traveller. ") + splitter.finish()
    assert sentences == ["Hello there, traveller."] and sentences[0].style is None


def test_shown_text_loses_the_tags_of_known_styles_only():
    text = "[happy] Hi there! [ SAD ]Bye. [wink] Really."
    assert without_style_tags(text, {"happy": 1, "sad": 2}) == "Hi there! Bye. [wink] Really."
    assert without_style_tags(text, {}) == text


async def test_each_style_speaks_with_its_own_voice_and_says_where_it_starts():
    voice, happy, sad = ToneVoice(frequency_hz=300), ToneVoice(frequency_hz=600), ToneVoice(frequency_hz=150)
    script = "Here we are at last. [happy] The harbour lights are on! [sad] But the last ship has gone."
    items = [
        item async for item in speak_reply(
            ScriptedLLM(token_delay_s=0.0), ScriptedTTS(rtf=0.0), voice, [ChatMessage("user", script)],
            GenerationOptions(), styles={"happy": happy, "sad": sad},
        )
    ]
    sentences = [item for item in items if isinstance(item, SentenceDone)]
    assert [(s.text, s.style) for s in sentences] == [
        ("Here we are at last.", None), ("The harbour lights are on!", "happy"), ("But the last ship has gone.", "sad"),
    ]
    for sentence, expected in zip(sentences, (voice, happy, sad)):
        spectrum = np.abs(np.fft.rfft(sentence.audio))
        heard_hz = np.argmax(spectrum) * SAMPLE_RATE / sentence.audio.size
        assert abs(heard_hz - expected.frequency_hz) < 5, (sentence.text, heard_hz)
        assert sentence.words is None  # the tone engine does not say when words are heard
    starts = np.cumsum([0] + [s.audio.size for s in sentences[:-1]]) / SAMPLE_RATE
    assert [s.offset_s for s in sentences] == pytest.approx(list(starts))
    assert "[" not in items[-1].text and items[-1].text.startswith("Here we are at last. The harbour")


def test_mouth_envelope_follows_loudness_per_frame():
    rate = 16000
    frame = int(MOUTH_FRAME_S * rate)
    audio = np.concatenate([np.zeros(frame), 0.5 * np.ones(frame), 0.25 * np.ones(frame), np.zeros(frame // 2)])
    assert mouth_envelope(audio.astype(np.float32), rate) == [0.0, 1.0, 0.5, 0.0]
    assert mouth_envelope(np.zeros(0, dtype=np.float32), rate) == []


class RecordingLLM(ScriptedLLM):
    """The scripted LLM, keeping the prompts it was given."""

    def __init__(self) -> None:
        super().__init__(token_delay_s=0.0)
        self.prompts: list[list[ChatMessage]] = []

    def stream_chat(self, messages, options):
        self.prompts.append(messages)
        return super().stream_chat(messages, options)


async def test_the_persona_is_told_its_tags_unless_the_request_pins_a_style(tmp_path):
    from contextlib import aclosing

    from chat2audio.protocol.chat import ChatOptions
    from tests.inprocess import scripted_service

    for folder, name, text in [
        ("speakers", "Moody.toml", 'engine = "scripted"\n[voice]\nfrequency_hz = 300\n[styles.happy]\nfrequency_hz = 600\n'
         '[styles.sad]\nfrequency_hz = 150\n'),
        ("prompts", "Moody.md", "You are Moody."),
    ]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(text)
    async with scripted_service(tmp_path) as service:
        service.llm = llm = RecordingLLM()
        for style in (None, "sad"):
            events = service.reply(ChatOptions(speaker="Moody", style=style), text="[happy] Hello there, friend.")
            async with aclosing(events) as items:
                sentences = [item async for item in items if isinstance(item, SentenceDone)]
            assert [s.style for s in sentences] == ["happy" if style is None else "sad"]
        told, pinned = (prompt[0].content for prompt in llm.prompts)
        assert told.startswith("You are Moody.") and "[happy], [sad]" in told
        assert pinned == "You are Moody."
