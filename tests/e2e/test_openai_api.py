"""The OpenAI-compatible API, driven by the official `openai` package and by requests shaped
exactly as SillyTavern, Open WebUI and pipecat send them; every format decoded by Debian's
ffmpeg. Scripted backends: each speaker is a tone of known pitch, so the audio proves whose
voice spoke and that nothing was dropped or resampled wrongly."""

from __future__ import annotations

import base64
import http.client
import io
import json
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import scripted_env
from tests.ffmpeg import decode, dominant_hz, needs_ffmpeg, probe
from tests.server import running_server

TEXT = "The first sentence is here. Then comes the second one! And is this the third?"
LOW_HZ, HIGH_HZ = 220, 880  # the speakers Low and High of the scripted voices
FORMATS = {  # response_format: (ffprobe codec, container)
    "mp3": ("mp3", "mp3"),
    "opus": ("opus", "ogg"),
    "aac": ("aac", "aac"),
    "flac": ("flac", "flac"),
    "wav": ("pcm_s16le", "wav"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    env = scripted_env(root, openai_default_voice="Low", scripted_token_delay_s="0.01")
    (root / "speakers" / "High.toml").write_text('engine = "scripted"\nopenai_voices = ["nova"]\n[voice]\nfrequency_hz = 880\n')
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="any key works when none is configured", max_retries=0)


@pytest.fixture(scope="module")
def reference(client) -> np.ndarray:
    """TEXT in Low's voice as a WAV: the exact audio every other format must carry."""
    wav = client.audio.speech.create(model="tts-1", voice="Low", input=TEXT, response_format="wav").content
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == 16000 and audio.size > rate
    return audio


# -- speech ----------------------------------------------------------------------------------------


@needs_ffmpeg
@pytest.mark.parametrize("response_format", FORMATS)
def test_sdk_gets_each_format_decodable_with_the_same_audio(client, reference, response_format):
    response = client.audio.speech.create(model="tts-1", voice="Low", input=TEXT, response_format=response_format)
    data = response.content
    codec, container = FORMATS[response_format]
    found = probe(data)
    assert found["codec_name"] == codec and container in found["format_name"].split(","), found
    audio = decode(data, rate=16000)
    # Within a codec frame and the encoder's priming (ADTS AAC carries no priming info: ~2 frames).
    assert abs(audio.size - reference.size) / 16000 < 0.2, "compressed audio should last as long as the WAV"
    assert dominant_hz(audio, 16000) == pytest.approx(LOW_HZ, abs=3)


def test_pcm_is_headerless_s16le_at_24khz(client, reference):
    data = client.audio.speech.create(model="tts-1", voice="Low", input=TEXT, response_format="pcm").content
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    assert len(data) % 2 == 0
    assert samples.size == pytest.approx(reference.size * 24000 / 16000, abs=64)  # resampled, nothing dropped
    assert dominant_hz(samples, 24000) == pytest.approx(LOW_HZ, abs=3)


def test_speech_streams_as_it_is_synthesized(server):
    """The first bytes come after the first sentence, not after the whole text."""
    arrivals = []
    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{server.base_url}/v1/audio/speech", json={"input": TEXT, "voice": "Low", "response_format": "mp3"}, timeout=30
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
        for chunk in response.iter_raw():
            arrivals.append((time.perf_counter() - started, len(chunk)))
    first, last = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) >= 3, arrivals
    assert last - first > 0.1, f"everything arrived at once: {arrivals}"


@needs_ffmpeg
def test_sse_stream_has_deltas_then_done_with_usage(client):
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="Low", input=TEXT, response_format="mp3", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    kinds = [event["type"] for event in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) >= 3
    assert events[-1]["usage"]["input_tokens"] > 0
    audio = decode(b"".join(base64.b64decode(event["audio"]) for event in events[:-1]), rate=16000)
    assert dominant_hz(audio, 16000) == pytest.approx(LOW_HZ, abs=3)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("voice", "hz"),
    [("Low", LOW_HZ), ("high", HIGH_HZ), ("nova", HIGH_HZ), ("alloy", LOW_HZ), ({"id": "High"}, HIGH_HZ)],
    ids=["speaker id", "any case", "claimed by a speaker file", "stock name to the default", "voice object"],
)
def test_voices_map_to_speakers(server, voice, hz):
    response = httpx.post(f"{server.base_url}/v1/audio/speech", json={"input": "Hello there.", "voice": voice}, timeout=30)
    assert response.status_code == 200, response.text
    assert dominant_hz(decode(response.content, rate=16000), 16000) == pytest.approx(hz, abs=3)


def test_unknown_voice_is_an_openai_error_listing_the_voices(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
    error = raised.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "voice" and error["code"] == "unknown_voice"
    assert "Low" in error["message"] and "alloy" in error["message"]
    assert raised.value.response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"input": "", "voice": "Low"}, "input"), ({"input": "x" * 12001, "voice": "Low"}, "input"),
     ({"input": "Hi.", "voice": "Low", "response_format": "ogg"}, "response_format"),
     ({"input": "Hi.", "voice": "Low", "speed": 9}, "speed")],
)
def test_invalid_speech_requests_are_openai_400s_naming_the_field(server, body, param):
    response = httpx.post(f"{server.base_url}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


# -- requests as other clients send them ---------------------------------------------------------------


def test_sillytavern_openai_compatible_tts_with_an_empty_key(server):
    """SillyTavern's proxy sends `Authorization: Bearer ` with no key and expects audio/mpeg
    (http.client, since httpx refuses to send a header value ending in a space)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    body = json.dumps({"input": "Hello there.", "voice": "alloy", "model": "tts-1", "response_format": "mp3", "speed": 1})
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/audio/speech", body, {"Authorization": "Bearer ", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type") == "audio/mpeg"
    assert response.read()[:2] in (b"\xff\xf3", b"\xff\xfb", b"\xff\xf2")  # an MPEG audio frame
    connection.close()


@needs_ffmpeg
def test_open_webui_sends_no_response_format_and_gets_mp3(server):
    response = httpx.post(
        f"{server.base_url}/v1/audio/speech", json={"input": "Hello there.", "model": "tts-1", "voice": "alloy"},
        headers={"Authorization": "Bearer sk-anything"}, timeout=30,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
    assert probe(response.content)["codec_name"] == "mp3"


def test_pipecat_pcm_at_24khz_with_a_stock_voice(server):
    with httpx.stream(
        "POST", f"{server.base_url}/v1/audio/speech",
        json={"input": TEXT, "model": "gpt-4o-mini-tts", "voice": "alloy", "response_format": "pcm"}, timeout=30,
    ) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    assert dominant_hz(samples, 24000) == pytest.approx(LOW_HZ, abs=3)


# -- chat completions -----------------------------------------------------------------------------------


def test_chat_completion_with_audio(client):
    completion = client.chat.completions.create(
        model="chat2audio", modalities=["text", "audio"], audio={"voice": "High", "format": "wav"},
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}],
    )
    message = completion.choices[0].message
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    assert message.audio.transcript == TEXT  # the scripted LLM says back what it was told
    assert message.audio.expires_at > time.time() and message.audio.id
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(message.audio.data)), dtype="float32")
    assert rate == 16000 and dominant_hz(audio, rate) == pytest.approx(HIGH_HZ, abs=3)


def test_streamed_chat_completion_has_a_transcript_piece_and_audio_per_sentence(client):
    stream = client.chat.completions.create(
        model="chat2audio", modalities=["text", "audio"], audio={"voice": "Low", "format": "pcm16"},
        messages=[{"role": "user", "content": TEXT}], stream=True,
    )
    transcript, audio, finish = [], bytearray(), None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        if choice.delta.audio is not None:
            delta = choice.delta.audio.model_dump() if hasattr(choice.delta.audio, "model_dump") else choice.delta.audio
            transcript.append(delta.get("transcript") or "")
            audio += base64.b64decode(delta.get("data") or "")
    assert "".join(transcript) == TEXT and len([piece for piece in transcript if piece]) == 3
    assert finish == "stop"
    samples = np.frombuffer(bytes(audio), dtype="<i2").astype(np.float32) / 32768
    assert dominant_hz(samples, 24000) == pytest.approx(LOW_HZ, abs=3)


def test_text_only_chat_completion_and_the_stateless_history(client):
    completion = client.chat.completions.create(
        model="Low", messages=[
            {"role": "user", "content": "Earlier words."}, {"role": "assistant", "content": "Earlier reply."},
            {"role": "user", "content": [{"type": "text", "text": "Only "}, {"type": "text", "text": "text."}]},
        ],
    )
    assert completion.choices[0].message.content == "Only text."
    assert completion.choices[0].message.audio is None


def test_chat_completion_refuses_what_it_cannot_do_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="chat2audio", messages=[{"role": "assistant", "content": "Hi."}])
    assert "end with the user's message" in raised.value.body["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="chat2audio", modalities=["text", "audio"], messages=[{"role": "user", "content": "Hi."}])
    assert raised.value.body["param"] == "audio"


# -- discovery, keys, metrics --------------------------------------------------------------------------


def test_discovery(client, server):
    assert {model.id for model in client.models.list()} >= {"chat2audio", "tts-1", "gpt-4o-mini-tts"}
    voices = httpx.get(f"{server.base_url}/v1/audio/voices").json()["voices"]
    by_id = {voice["id"]: voice for voice in voices}
    assert set(by_id) == {"Low", "High", "Fragile"}  # Broken cannot speak
    assert "nova" in by_id["High"]["aliases"] and "alloy" in by_id["Low"]["aliases"]
    assert "tts-1" in {model["id"] for model in httpx.get(f"{server.base_url}/v1/audio/models").json()["models"]}


def test_a_configured_key_is_required_in_openai_shape(tmp_path):
    env = scripted_env(tmp_path, api_key="the-key")
    with running_server("app_stream", env, tmp_path / "server.log") as keyed:
        client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            client.models.list()
        assert raised.value.body["type"] == "authentication_error"
        good = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="the-key", max_retries=0)
        assert good.audio.speech.create(model="tts-1", voice="Low", input="Hi.").content


def test_metrics_count_what_was_asked(tmp_path):
    env = scripted_env(tmp_path, scripted_token_delay_s="0.01")
    with running_server("app_stream", env, tmp_path / "server.log") as fresh:
        for _ in range(3):
            assert httpx.post(f"{fresh.base_url}/v1/audio/speech", json={"input": "Hello there.", "voice": "Low"}).status_code == 200
        assert httpx.post(f"{fresh.base_url}/chat2audio", json={"input": "Hi there.", "speaker": "High", "format": "mp3"}).status_code == 200
        assert httpx.post(f"{fresh.base_url}/v1/audio/speech", json={"input": "Hi.", "voice": "nobody"}).status_code == 400
        text = httpx.get(f"{fresh.base_url}/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert samples[("chat2audio_time_to_first_audio_seconds_count", (("endpoint", "/v1/audio/speech"),))] == 3
    assert samples[("chat2audio_time_to_first_audio_seconds_count", (("endpoint", "/chat2audio"),))] == 1
    assert samples[("chat2audio_requests_total", (("endpoint", "/v1/audio/speech"), ("status", "200")))] == 3
    assert samples[("chat2audio_requests_total", (("endpoint", "/v1/audio/speech"), ("status", "400")))] == 1
    assert samples[("chat2audio_real_time_factor_count", (("engine", "scripted"),))] == 4
    assert samples[("chat2audio_tts_audio_seconds_total", (("engine", "scripted"),))] > 0
    assert samples[("chat2audio_llm_tokens_total", ())] > 0
    assert samples[("chat2audio_requests_rejected_total", ())] == 0
    assert samples[("chat2audio_requests_in_flight", ())] == 1  # the scrape itself


@needs_ffmpeg
def test_the_non_stream_app_answers_whole_files(tmp_path, reference):
    """A WAV with its real sizes (not a stream's unknown ones), compressed files in one piece."""
    env = scripted_env(tmp_path, openai_default_voice="Low", scripted_token_delay_s="0.01")
    with running_server("app_non_stream", env, tmp_path / "server.log") as whole:
        wav = httpx.post(f"{whole.base_url}/v1/audio/speech", json={"input": TEXT, "voice": "Low", "response_format": "wav"}, timeout=30)
        assert int(wav.headers["content-length"]) == len(wav.content)
        assert int.from_bytes(wav.content[40:44], "little") == len(wav.content) - 44  # the data chunk's real size
        assert soundfile.read(io.BytesIO(wav.content), dtype="float32")[0].size == reference.size
        pcm = httpx.post(f"{whole.base_url}/v1/audio/speech", json={"input": TEXT, "voice": "Low", "response_format": "pcm"}, timeout=30)
        assert pcm.headers["x-sample-rate"] == "24000" and len(pcm.content) // 2 == pytest.approx(reference.size * 1.5, abs=64)
        mp3 = httpx.post(f"{whole.base_url}/chat2audio", json={"input": TEXT, "speaker": "High", "format": "mp3"}, timeout=30)
        assert mp3.headers["content-type"] == "audio/mpeg" and int(mp3.headers["content-length"]) == len(mp3.content)
        assert dominant_hz(decode(mp3.content, rate=16000), 16000) == pytest.approx(HIGH_HZ, abs=3)
