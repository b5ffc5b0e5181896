"""Word timings: the alignment, and the words the engine yields with each sentence's audio."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS, tiny_voice
from tests.tts.gpt_sovits.helpers import DETERMINISTIC, LONG, SHORT, assert_audio, collect_items, unhurried
from tts.base import WordTimings
from tts.gpt_sovits.word_timing import SentenceWords, monotonic_alignment

SAMPLE_RATE = 32000


def _spoken(text: str) -> str:
    return "".join(character for character in text if character.isalnum())


def test_the_alignment_is_gsv_tts_viterbi_path():
    import torch
    from gsv_tts.TTS import TTS

    rng = np.random.default_rng(3)
    for heads, frames, phonemes in [(2, 1, 5), (2, 40, 12), (2, 300, 60), (4, 200, 90)]:
        for _ in range(3):
            attention = torch.from_numpy(rng.normal(size=(heads, frames, phonemes)).astype(np.float32)).softmax(-1)
            expected = TTS._viterbi_monotonic(None, attention).numpy()
            np.testing.assert_array_equal(monotonic_alignment(attention.numpy()), expected)


def test_words_are_the_sentence_s_spoken_characters_as_written(gsv_engine):
    from gsv_tts.TextProcessor import get_phones_and_bert

    def words_of(text):
        phones, word2ph, _, norm_text = get_phones_and_bert(text, gsv_engine.cache.tts.tts_config, "zh")
        return SentenceWords.build(text, word2ph, norm_text, len(phones))

    # Digits are read as Chinese numerals; the words are still as written ("12", not "十二").
    for text in ("你好，很高兴认识你。", "今天是12月3日，好！"):
        words = gsv_engine._worker.submit(words_of, text).result()
        assert "".join(words.texts) == _spoken(text), words.texts
    unaccounted = {"word": ["你", "好"], "ph": [2, 2]}  # 4 of the 5 phonemes
    assert SentenceWords.build("你好。", unaccounted, "你好", 5) is None


def _check(items: list, text: str) -> tuple[np.ndarray, list]:
    """The sentence's audio and words, checked against the contract."""
    audio = [item for item in items if isinstance(item, np.ndarray)]
    timings = [item for item in items if isinstance(item, WordTimings)]
    assert len(audio) + len(timings) == len(items)
    for chunk in audio:
        assert_audio(chunk)
    assert items and isinstance(items[0], np.ndarray)  # words follow the audio they are heard in
    words = [word for timing in timings for word in timing.words]
    assert all(timing.words for timing in timings)
    assert "".join(word.text for word in words) == _spoken(text)
    duration = sum(chunk.size for chunk in audio) / SAMPLE_RATE
    previous_end = 0.0
    for word in words:
        assert previous_end <= word.start_s <= word.end_s <= duration, (word, duration)
        previous_end = word.end_s
    return np.concatenate(audio), words


async def test_a_whole_sentence_comes_with_its_words(gsv_engine):
    items = await collect_items(gsv_engine, SHORT, tiny_voice())
    audio, words = _check(items, SHORT)
    assert len([item for item in items if isinstance(item, WordTimings)]) == 1
    assert words[-1].end_s > 0  # the words are heard somewhere in the audio


async def test_a_streamed_sentence_s_words_come_as_their_audio_is_made(gsv_engine):
    voice = tiny_voice(**DETERMINISTIC)
    with unhurried():
        items = await collect_items(gsv_engine, LONG, voice, streaming=True)
    audio, words = _check(items, LONG)
    assert sum(isinstance(item, np.ndarray) for item in items) >= 3
    # Each WordTimings comes after audio that covers the start of each of its words.
    heard = 0
    for item in items:
        if isinstance(item, np.ndarray):
            heard += item.size
        else:
            assert all(word.start_s <= heard / SAMPLE_RATE for word in item.words)
    # The same engine without timings makes the same audio: timing words changes nothing heard.
    gsv_engine._batcher.word_timings = False
    try:
        with unhurried():
            plain = await collect_items(gsv_engine, LONG, voice, streaming=True)
    finally:
        gsv_engine._batcher.word_timings = True
    np.testing.assert_array_equal(np.concatenate(plain), audio)


async def test_sentences_decoding_together_each_get_their_own_words(gsv_engine):
    jobs = [(text, streaming) for text in SPOKEN_TEXTS for streaming in (False, True)]
    voices = [tiny_voice("TinyA"), tiny_voice("TinyB", speed_factor=1.5)]
    with unhurried():
        results = await asyncio.gather(
            *(collect_items(gsv_engine, text, voices[i % 2], streaming=s) for i, (text, s) in enumerate(jobs))
        )
    assert gsv_engine.stats.largest_batch >= 2
    for (text, _), items in zip(jobs, results):
        _check(items, text)

