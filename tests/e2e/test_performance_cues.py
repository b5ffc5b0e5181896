"""Characters that perform, on the embedded voice (eSpeak NG) through the real server: a reply
whose model output holds "[happy] … [sad] …" is spoken in two measurably different deliveries,
the tags neither spoken nor shown, and every sentence says where it starts, when its words are
heard (checked against the onsets measured in its audio) and how open the mouth is. The LLM is
the scripted one (it writes the user's message back), so the model output is known exactly."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import unquote

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.server import running_server

WORDS = ["Red", "green", "blue", "yellow", "purple"]
LINE = ", ".join(WORDS) + "."
OPENING = "Now listen."  # the first sentence may end at a comma (first audio sooner): the lines come after it
SCRIPT = f"{OPENING} [happy] {LINE} [sad] {LINE}"
ONSET_TOLERANCE_S = 0.08
ENV = {"CHAT2AUDIO_LLM_BACKEND": "scripted", "CHAT2AUDIO_TESTING__SCRIPTED_TOKEN_DELAY_S": "0.005"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("app_stream", ENV, tmp_path_factory.mktemp("cues") / "server.log") as running:
        yield running


def events(server, **request) -> list[dict]:
    body = {"speaker": "Aria", "format": "events", **request}
    with httpx.stream("POST", f"{server.base_url}/chat2audio", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def sentence_audio(event: dict) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(event["audio_wav_base64"])), dtype="float32")
    return audio, rate


def pitch_hz(audio: np.ndarray, rate: int) -> float:
    """Median fundamental frequency over the voiced 40 ms frames (autocorrelation peak, 70-400 Hz)."""
    frame, pitches = int(0.04 * rate), []
    for start in range(0, audio.size - frame, frame // 2):
        window = audio[start : start + frame]
        if np.sqrt(np.mean(window**2)) < 0.03:
            continue
        window = window - window.mean()
        correlation = np.correlate(window, window, mode="full")[frame - 1 :]
        low, high = int(rate / 400), int(rate / 70)
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.3 * correlation[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches))


def onsets_s(audio: np.ndarray, rate: int) -> list[float]:
    """Where sound starts after at least 60 ms of quiet (5 ms energy frames, 5% of the peak)."""
    hop = int(0.005 * rate)
    energy = np.sqrt(np.mean(audio[: audio.size // hop * hop].reshape(-1, hop) ** 2, axis=1))
    loud = energy > 0.05 * energy.max()
    starts, quiet = [], 12
    for index, is_loud in enumerate(loud):
        if is_loud and quiet >= 12:
            starts.append(index * hop / rate)
        quiet = 0 if is_loud else quiet + 1
    return starts


def test_tags_switch_the_delivery_and_are_neither_spoken_nor_shown(server):
    got = events(server, input=SCRIPT)
    sentences = [event for event in got if event["type"] == "sentence"]
    done = got[-1]
    assert [(s["text"], s["style"]) for s in sentences] == [(OPENING, None), (LINE, "happy"), (LINE, "sad")]
    shown = f"{OPENING} {LINE} {LINE}"
    assert done["type"] == "done" and done["text"] == shown and done["spoken_text"] == shown
    (happy, rate), (sad, _) = sentence_audio(sentences[1]), sentence_audio(sentences[2])
    # Aria's styles: happy pitch 80 / rate 185, sad pitch 38 / rate 130 (speakers/Aria.toml).
    assert pitch_hz(happy, rate) > 1.2 * pitch_hz(sad, rate)
    assert sad.size > 1.2 * happy.size  # the same words, said slower


def test_each_sentence_says_when_its_words_are_heard(server):
    sentences = [event for event in events(server, input=SCRIPT) if event["type"] == "sentence"]
    assert sentences[0]["offset_s"] == 0.0
    for before, sentence in zip(sentences, sentences[1:]):
        assert sentence["offset_s"] == pytest.approx(before["offset_s"] + before["audio_seconds"], abs=0.001)
    assert [word["text"] for word in sentences[0]["words"]] == ["Now", "listen"]
    for sentence in sentences[1:]:
        audio, rate = sentence_audio(sentence)
        words = sentence["words"]
        assert [word["text"] for word in words] == WORDS
        times = [t for word in words for t in (word["start_s"], word["end_s"])]
        assert times == sorted(times) and times[0] >= 0 and times[-1] <= audio.size / rate
        heard = onsets_s(audio, rate)
        assert len(heard) == len(WORDS), heard  # a pause after each comma: one onset per word
        for word, onset in zip(words, heard):
            assert abs(word["start_s"] - onset) <= ONSET_TOLERANCE_S, (word, onset)


def test_each_sentence_carries_its_mouth_envelope(server):
    for sentence in [event for event in events(server, input=SCRIPT) if event["type"] == "sentence"]:
        audio, rate = sentence_audio(sentence)
        mouth, frame_s = sentence["mouth"], sentence["mouth_frame_s"]
        assert frame_s == 0.02 and len(mouth) == int(np.ceil(audio.size / (frame_s * rate)))
        assert min(mouth) >= 0 and max(mouth) == 1.0
        assert mouth[0] < 0.2 or mouth[-1] < 0.2  # speech starts or ends quieter than its loudest moment


def test_a_request_may_pin_a_style_and_an_unknown_one_is_refused(server):
    sentences = [event for event in events(server, input=SCRIPT, style="sad") if event["type"] == "sentence"]
    assert [s["style"] for s in sentences] == ["sad"] * 3 and all("[" not in s["text"] for s in sentences)
    response = httpx.post(f"{server.base_url}/chat2audio", json={"speaker": "Aria", "input": "Hi.", "style": "grumpy"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert "grumpy" in error["message"] and "happy, sad" in error["message"]


def test_speakers_list_their_styles(server):
    speakers = {s["id"]: s for s in httpx.get(f"{server.base_url}/speakers").json()["speakers"]}
    assert speakers["Aria"]["styles"] == ["happy", "sad"] and speakers["Orion"]["styles"] == ["happy", "sad"]


def test_openai_stream_carries_the_cues_as_extra_fields(server):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="chat2audio", messages=[{"role": "user", "content": SCRIPT}], stream=True,
        modalities=["text", "audio"], audio={"voice": "Aria", "format": "pcm16"},
    )
    deltas = [chunk.choices[0].delta.audio for chunk in stream if chunk.choices and chunk.choices[0].delta.audio]
    sentences = [audio for audio in (delta.model_dump() for delta in deltas) if audio.get("transcript")]
    assert [audio["style"] for audio in sentences] == [None, "happy", "sad"]
    assert [word["text"] for word in sentences[2]["words"]] == WORDS and sentences[2]["offset_s"] > 1.0


def test_a_whole_file_names_its_word_timings_in_a_header(tmp_path):
    with running_server("app_non_stream", ENV, tmp_path / "server.log") as server:
        response = httpx.post(
            f"{server.base_url}/v1/audio/speech",
            json={"model": "tts-1", "voice": "Aria", "input": SCRIPT, "response_format": "wav"}, timeout=60,
        )
    assert response.status_code == 200, response.text
    words = json.loads(unquote(response.headers["x-word-timings"]))
    assert [word["text"] for word in words] == ["Now", "listen", *WORDS, *WORDS]
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    starts = [word["start_s"] for word in words]
    assert starts == sorted(starts) and words[-1]["end_s"] <= audio.size / rate
