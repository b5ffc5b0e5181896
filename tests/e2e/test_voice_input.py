"""Voice input through the real server: a multipart upload of the user's speech is transcribed
(a tiny random Whisper in the real on-disk format, or a remote OpenAI-compatible
/v1/audio/transcriptions) and answered like typed input."""

from __future__ import annotations

import io
import subprocess

import httpx
import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import scripted_env
from tests.ffmpeg import needs_ffmpeg
from tests.fixtures.openai_stt_stub import OpenAISTTStub
from tests.fixtures.tiny_whisper import build_tiny_whisper
from tests.server import events_of, running_server


def speech_wav(seconds: float = 1.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32) / 2
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def as_webm(wav: bytes) -> bytes:
    """The WAV as a browser's MediaRecorder sends it: Opus in WebM, encoded by Debian's ffmpeg."""
    run = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:", "-c:a", "libopus", "-f", "webm", "pipe:"],
        input=wav, capture_output=True, timeout=60, check=True,
    )
    return run.stdout


def ask_by_voice(server, audio: bytes, name: str = "me.wav", **fields) -> httpx.Response:
    data = {"speaker": "Low", "format": "events", **fields}
    files = {"audio": (name, audio, "audio/webm" if name.endswith(".webm") else "audio/wav")}
    return httpx.post(f"{server.base_url}/chat2audio", data=data, files=files, timeout=120)


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    whisper = build_tiny_whisper(root / "models" / "tiny-whisper", seed=0)
    env = scripted_env(root, stt_backend="transformers", stt_model=str(whisper), device="cpu", scripted_tts_rtf="0.01")
    with running_server("app_stream", env, root / "server.log") as server:
        yield server


def test_spoken_input_is_transcribed_and_answered(whisper_server):
    response = ask_by_voice(whisper_server, speech_wav(), session_id="v1", max_new_tokens="400")
    assert response.status_code == 200, response.text
    events = events_of(response)
    transcript = events[0]["transcript"]
    assert transcript  # the tiny random model hears something, deterministically
    assert events[-1]["type"] == "done"
    assert events[-1]["text"] == transcript.strip()  # the scripted LLM echoes what it was told
    again = events_of(ask_by_voice(whisper_server, speech_wav()))
    assert again[0]["transcript"] == transcript
    turns = httpx.get(f"{whisper_server.base_url}/sessions/v1", params={"speaker": "Low"}).json()["turns"]
    assert turns[0] == {"role": "user", "content": transcript}


@needs_ffmpeg
def test_a_browser_recording_is_transcribed_and_answered(whisper_server):
    # What the web page uploads: MediaRecorder's own format, decoded by the server (FFmpeg).
    response = ask_by_voice(whisper_server, as_webm(speech_wav()), name="speech.webm")
    assert response.status_code == 200, response.text
    events = events_of(response)
    assert events[0]["transcript"] and events[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("audio", "says"),
    [
        (b"not audio at all", "speech-to-text"),
        (b"", "speech-to-text"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 64, "could not decode the audio"),  # a WebM cut inside its header
    ],
    ids=["garbage", "empty", "cut-webm"],
)
def test_unusable_audio_is_a_clear_422(whisper_server, audio, says):
    response = ask_by_voice(whisper_server, audio)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] in ("invalid_audio", "invalid_request") and says in error["message"]


def test_upload_without_audio_field_is_rejected(whisper_server):
    response = httpx.post(f"{whisper_server.base_url}/chat2audio", data={"speaker": "Low", "input": "hi"}, files={"x": ("a", b"1")})
    assert response.status_code == 422 and "`audio` file" in response.json()["error"]["message"]


def test_remote_transcription_server(tmp_path):
    with OpenAISTTStub(transcript="Where is the harbour?", api_key="stt-key") as stub:
        env = scripted_env(
            tmp_path, stt_backend="openai", stt_base_url=stub.base_url, stt_model="whisper-1", stt_api_key="stt-key"
        )
        with running_server("app_non_stream", env, tmp_path / "server.log") as server:
            response = httpx.post(
                f"{server.base_url}/chat2audio", data={"speaker": "High"}, files={"audio": ("q.wav", speech_wav())}, timeout=60
            )
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert stub.requests[-1].fields["model"].text == "whisper-1"
