"""What the performance cues cost a sentence on the embedded voice (eSpeak NG), in one run:

    python -m bench.cues [--sentences 40]

Synthesizes the same English sentences with eSpeak and times, per sentence: the synthesis itself,
the word timings made from eSpeak's word events, the mouth envelope, and the whole `sentence`
event (which also holds the sentence's WAV as base64, as before the cues). Medians, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from chat2audio.audio import mouth_envelope
from chat2audio.http.encoders import sentence_event
from chat2audio.pipeline import SentenceDone
from chat2audio.settings import Settings
from chat2audio.wiring import _espeak
from tts.base import WordTimings
from tts.espeak import EspeakVoice, word_timings

SENTENCES = [
    "The harbour lights come on one by one as the evening falls.",
    "Follow the lanterns down the hill, and you will find the old ship waiting.",
    "I have kept this map for years, though nobody believed it was real.",
    "Well, I think the weather today is quite lovely for a long walk.",
]


async def measure(count: int) -> dict[str, list[float]]:
    engine = _espeak(Settings())
    await engine.start()
    voice = EspeakVoice()
    times: dict[str, list[float]] = {"synthesis (words included)": [], "word timings": [], "mouth envelope": [], "sentence event": []}
    try:
        for index in range(count):
            text = SENTENCES[index % len(SENTENCES)]
            began = time.perf_counter()
            audio, words = [], None
            async for item in engine.synthesize(text, voice):
                if isinstance(item, WordTimings):
                    words = item.words
                else:
                    audio.append(item)
            times["synthesis (words included)"].append(time.perf_counter() - began)
            samples = np.concatenate(audio)
            marks = list(engine._marks)  # the last synthesis's word events, as word_timings reads them
            began = time.perf_counter()
            word_timings(text, marks, samples, 22050)
            times["word timings"].append(time.perf_counter() - began)
            began = time.perf_counter()
            mouth_envelope(samples, 22050)
            times["mouth envelope"].append(time.perf_counter() - began)
            sentence = SentenceDone(0, text, text, samples, "", "happy", 0.0, words)
            began = time.perf_counter()
            sentence_event(sentence, 22050, 0.0).model_dump_json()
            times["sentence event"].append(time.perf_counter() - began)
    finally:
        await engine.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=40)
    arguments = parser.parse_args()
    times = asyncio.run(measure(arguments.sentences))
    print("| step | median ms per sentence | max ms |")
    print("| --- | --- | --- |")
    for step, values in times.items():
        print(f"| {step} | {1000 * statistics.median(values):.2f} | {1000 * max(values):.2f} |")


if __name__ == "__main__":
    main()
