"""Both apps end to end through a real uvicorn server, on the scripted LLM and TTS (known speeds):
sentence-by-sentence arrival, valid WAVs, events, errors, and work that stops when clients leave."""

from __future__ import annotations

import io
import time
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import TOKEN_DELAY_S
from tests.server import events_of, running_server, wait_until_idle
from tts.scripted import SAMPLE_RATE, ScriptedTTS

SCRIPT = "The harbour is close by. Follow the lanterns down the hill. The ships wait there for us."
SENTENCES = ["The harbour is close by.", "Follow the lanterns down the hill.", "The ships wait there for us."]
LONG_SCRIPT = " ".join(f"This is sentence number {n} of a very long reply." for n in range(60))


def samples_of(sentence: str) -> int:
    return int(ScriptedTTS.duration_s(sentence) * SAMPLE_RATE)


@pytest.fixture(scope="module")
def stream_server(config_dirs, tmp_path_factory):
    with running_server("app_stream", config_dirs, tmp_path_factory.mktemp("log") / "stream.log") as server:
        yield server


@pytest.fixture(scope="module")
def non_stream_server(config_dirs, tmp_path_factory):
    with running_server("app_non_stream", config_dirs, tmp_path_factory.mktemp("log") / "non_stream.log") as server:
        yield server


def post(server, body: dict, timeout: float | httpx.Timeout = 30, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=timeout, **kwargs)


def test_stream_arrives_sentence_by_sentence(stream_server):
    arrivals: list[tuple[float, int]] = []
    body = b""
    started = time.perf_counter()
    with httpx.stream("POST", f"{stream_server.base_url}/chat2audio", json={"input": SCRIPT, "speaker": "Low"}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-sample-rate"] == str(SAMPLE_RATE)
        for chunk in response.iter_raw():
            body += chunk
            arrivals.append((time.perf_counter() - started, (len(body) - 44) // 2))

    audio, rate = soundfile.read(io.BytesIO(body), dtype="float32")
    assert rate == SAMPLE_RATE
    assert audio.size == sum(samples_of(s) for s in SENTENCES)

    def reached(samples: int) -> float:
        return next(t for t, received in arrivals if received >= samples)

    first_end = samples_of(SENTENCES[0])
    second_end = first_end + samples_of(SENTENCES[1])
    # Each sentence's audio arrives when the LLM has written it, about 0.4-0.5 s apart,
    # and the first leaves long before the LLM has written the whole reply.
    llm_total = len(SCRIPT) / 4 * TOKEN_DELAY_S
    assert reached(1) < llm_total * 0.6
    assert reached(second_end) - reached(first_end) > 0.2
    assert reached(audio.size) - reached(second_end) > 0.2


def test_non_stream_returns_one_wav_with_the_reply_text(non_stream_server):
    response = post(non_stream_server, {"input": SCRIPT, "speaker": "High"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    assert rate == SAMPLE_RATE == int(response.headers["x-sample-rate"])
    assert audio.size == sum(samples_of(s) for s in SENTENCES)
    assert unquote(response.headers["x-reply-text"]) == SCRIPT
    # The High speaker's voice: its tone is 880 Hz, not Low's 220 Hz.
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / audio.size - 880) < 5


@pytest.mark.parametrize("app", ["stream", "non_stream"])
def test_events_give_each_sentence_text_with_its_audio(app, stream_server, non_stream_server):
    server = stream_server if app == "stream" else non_stream_server
    response = post(server, {"input": SCRIPT, "speaker": "Low", "format": "events"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response)
    assert [e["type"] for e in events] == ["start", "sentence", "sentence", "sentence", "done"]
    assert events[0]["sample_rate"] == SAMPLE_RATE
    sentences = events[1:4]
    assert [e["text"] for e in sentences] == SENTENCES
    for event, sentence in zip(sentences, SENTENCES):
        import base64

        audio, rate = soundfile.read(io.BytesIO(base64.b64decode(event["audio_wav_base64"])))
        assert rate == SAMPLE_RATE and audio.size == samples_of(sentence)
    assert sentences[0]["elapsed_seconds"] < sentences[1]["elapsed_seconds"] < sentences[2]["elapsed_seconds"]
    assert events[-1]["text"] == SCRIPT and events[-1]["finish_reason"] == "stop"


def test_client_leaving_mid_stream_stops_the_work(stream_server):
    with httpx.stream("POST", f"{stream_server.base_url}/chat2audio", json={"input": LONG_SCRIPT, "speaker": "Low"}, timeout=30) as response:
        chunks = response.iter_raw()
        next(chunks)
        stats = httpx.get(f"{stream_server.base_url}/stats", timeout=5).json()
        assert stats["active_replies"] == 1 and stats["llm_active_generations"] == 1
    assert wait_until_idle(stream_server) < 1.0


def test_client_leaving_a_non_stream_request_stops_the_work(non_stream_server):
    # The client gives up after 0.8 s: long before this 60-sentence reply could be finished.
    with pytest.raises(httpx.ReadTimeout):
        post(non_stream_server, {"input": LONG_SCRIPT, "speaker": "Low"}, timeout=httpx.Timeout(30, read=0.8))
    assert wait_until_idle(non_stream_server) < 1.0


@pytest.mark.parametrize(
    ("body", "status", "error_type", "says"),
    [
        ({"input": "hi", "speaker": "Nobody"}, 404, "unknown_speaker", "known speakers: Broken, Fragile, High, Low"),
        ({"input": "hi", "speaker": "../../etc/passwd"}, 404, "unknown_speaker", "known speakers"),
        ({"input": "   ", "speaker": "Low"}, 422, "invalid_request", "input"),
        ({"input": "", "speaker": "Low"}, 422, "invalid_request", "input"),
        ({"speaker": "Low"}, 422, "invalid_request", "input: Field required"),
        ({"input": 3, "speaker": "Low"}, 422, "invalid_request", "input"),
        ({"input": "hi", "speaker": "Low", "volume": 11}, 422, "invalid_request", "volume"),
        ({"input": "x" * 12001, "speaker": "Low"}, 422, "invalid_input", "limit is 12000"),
        ({"input": "hi", "speaker": "Broken"}, 503, "speaker_unavailable", "field voice.frequency_hz"),
    ],
)
def test_bad_requests_get_clear_json_errors(stream_server, body, status, error_type, says):
    response = post(stream_server, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert says in error["message"]


def test_body_too_large_is_413(stream_server):
    response = post(stream_server, {"input": "x" * 17_000, "speaker": "Low"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "body_too_large"


def test_speakers_health_and_ready(stream_server):
    speakers = {s["id"]: s for s in httpx.get(f"{stream_server.base_url}/speakers").json()["speakers"]}
    assert speakers["Low"]["available"] and speakers["Low"]["sample_rate"] == SAMPLE_RATE
    assert not speakers["Broken"]["available"] and "Broken.toml" in speakers["Broken"]["reason"]
    assert httpx.get(f"{stream_server.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{stream_server.base_url}/ready").status_code == 200


def test_a_whole_number_written_as_a_float_is_a_token_count(stream_server):
    # JSON Schema calls 40.0 an integer; a client serialising every number as a float must not get a 422.
    response = post(stream_server, {"input": "Hello there.", "speaker": "Low", "max_new_tokens": 40.0, "format": "text"})
    assert response.status_code == 200
    for not_a_count in (40.5, "40", True):
        response = post(stream_server, {"input": "Hello there.", "speaker": "Low", "max_new_tokens": not_a_count})
        assert response.status_code == 422 and "max_new_tokens" in response.json()["error"]["message"]


def test_wrong_method_lists_every_method_the_path_serves(stream_server):
    response = httpx.request("OPTIONS", f"{stream_server.base_url}/sessions/abc")
    assert response.status_code == 405 and response.json()["error"]["type"] == "method_not_allowed"
    assert {"GET", "DELETE"} <= {m.strip() for m in response.headers["allow"].split(",")}


def test_unknown_route_is_json_404(stream_server):
    response = httpx.get(f"{stream_server.base_url}/nope")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


@pytest.fixture(scope="module")
def keyed_server(config_dirs, tmp_path_factory):
    env = {**config_dirs, "CHAT2AUDIO_API_KEY": "s3cret-key"}
    with running_server("app_stream", env, tmp_path_factory.mktemp("log") / "keyed.log") as server:
        yield server


def test_api_key_guards_everything_but_health(keyed_server):
    url = keyed_server.base_url
    assert httpx.get(f"{url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
        response = httpx.get(f"{url}/speakers", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
        assert httpx.post(f"{url}/chat2audio", json={"input": "hi", "speaker": "Low"}, headers=headers).status_code == 401
    good = {"Authorization": "Bearer s3cret-key"}
    assert httpx.get(f"{url}/speakers", headers=good).status_code == 200
    assert httpx.post(f"{url}/chat2audio", json={"input": "Hello there.", "speaker": "Low"}, headers=good, timeout=30).status_code == 200


def test_non_utf8_and_non_json_bodies_are_rejected_clearly(stream_server):
    url = f"{stream_server.base_url}/chat2audio"
    response = httpx.post(url, content=b'{"input": "\xff\xfe", "speaker": "Low"}', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_request"
    response = httpx.post(url, content=b"<speak>hi</speak>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415 and "JSON" in response.json()["error"]["message"]
    response = httpx.post(url, data={"speaker": "Low"}, files={"audio": ("a.wav", b"RIFF")})
    assert response.status_code == 422 and "voice input is not enabled" in response.json()["error"]["message"]
    response = httpx.post(url, json={"input": "hi", "speaker": "Low\u0000"})
    assert response.status_code == 404


def test_broken_llm_keeps_the_service_up_and_says_why(tmp_path):
    from tests.e2e.conftest import scripted_env

    env = scripted_env(tmp_path, llm_backend="transformers", llm_model=str(tmp_path / "no-such-model"))
    with running_server("app_stream", env, tmp_path / "server.log", wait_for_ready=False) as server:
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.base_url}/ready").json().get("error") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        ready = httpx.get(f"{server.base_url}/ready")
        assert ready.status_code == 503 and "LLM model not found" in ready.json()["error"]
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        response = post(server, {"input": "hi", "speaker": "Low"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "not_ready"
