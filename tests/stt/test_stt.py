"""Speech-to-text: audio decoding, the local Whisper backend on a tiny random model, and the
remote backend against a real OpenAI-compatible stub server on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from chat2audio.settings import Settings
from chat2audio.wiring import STT_BACKENDS, create_stt
from stt.base import STTBackend, STTError, audio_duration, decode_audio
from stt.openai_backend import OpenAISTTBackend, upload_name
from stt.transformers_backend import TransformersSTTBackend
from tests.fixtures.openai_stt_stub import DEFAULT_TRANSCRIPT, OpenAISTTStub
from tests.fixtures.tiny_whisper import build_tiny_whisper
from tests.loop_watch import loop_gaps

# Read by huggingface_hub at import time; local directories never need the hub anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_KEY = "sk-stt-SECRET-0123456789"


def settings(**overrides: Any) -> Settings:
    """Settings with the STT fields (and the shared ones the backends read) set here, not by the environment."""
    values: dict[str, Any] = dict(
        stt_backend="none", stt_model=None, stt_base_url=None, stt_api_key=None,
        stt_max_audio_seconds=60.0, stt_language=None,
        models_dir=Path("/nonexistent/models"), device="cpu", max_concurrent_requests=4,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def tone(seconds: float, rate: int, *, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels == 1:
        return wave
    return np.stack([wave] + [np.zeros_like(wave)] * (channels - 1), axis=1)  # sound on the left only


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def speechlike(seconds: float, seed: int = 0) -> bytes:
    """A few seconds of deterministic noisy tones at 16 kHz, as WAV."""
    rng = np.random.default_rng(seed)
    wave = tone(seconds, 16000, freq=220.0) + 0.05 * rng.standard_normal(int(seconds * 16000)).astype(np.float32)
    return encode(wave.astype(np.float32), 16000)


# -- decode_audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [22050, 44100])
def test_decode_resamples_stereo_to_16k_mono(rate: int) -> None:
    data = encode(tone(1.5, rate, channels=2), rate)
    out = decode_audio(data, max_seconds=10)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == 24000  # 1.5 s at 16 kHz
    # Left channel at 0.5, right silent: the mono mix peaks near 0.25.
    assert 0.22 < np.abs(out).max() < 0.28


def test_decode_keeps_16k_mono_as_is() -> None:
    wave = tone(0.5, 16000)
    out = decode_audio(encode(wave, 16000, subtype="FLOAT"), max_seconds=1)
    np.testing.assert_array_equal(out, wave)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_decode_other_formats(fmt: str) -> None:
    out = decode_audio(encode(tone(1.0, 48000), 48000, fmt), target_rate=8000, max_seconds=5)
    assert len(out) == 8000


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"this is not audio at all" * 10, "could not decode"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "could not decode"),  # a truncated header
        (encode(np.zeros((0, 1), np.float32), 16000), "no samples"),
        (encode(tone(3.0, 16000), 16000), "too long: 3.0 s long; the limit is 2 s"),
        (encode(np.full(100, np.nan, np.float32), 16000, subtype="FLOAT"), "NaN"),
        (encode(tone(1.0, 1000), 1000), "sample rate (1000 Hz) is too low"),
    ],
    ids=["empty", "garbage", "truncated", "zero-frames", "too-long", "nan", "low-rate"],
)
def test_decode_rejects_bad_audio(data: bytes, words: str) -> None:
    with pytest.raises(STTError) as info:
        decode_audio(data, max_seconds=2)
    assert info.value.status == 422
    assert words in str(info.value)


def test_audio_duration() -> None:
    assert audio_duration(encode(tone(1.25, 22050), 22050)) == pytest.approx(1.25, abs=1e-3)
    assert audio_duration(b"\x1a\x45\xdf\xa3 webm is not for soundfile") is None


# -- the registry ------------------------------------------------------------------------------


def test_create_backend_by_name(tmp_path: Path) -> None:
    assert create_stt(settings(stt_backend="none")) is None
    assert set(STT_BACKENDS) == {"transformers", "openai"}
    local = create_stt(settings(stt_backend="transformers", stt_model="whisper-tiny", models_dir=tmp_path,
                                    stt_language="zh", stt_max_audio_seconds=30.0))
    assert isinstance(local, TransformersSTTBackend) and isinstance(local, STTBackend)
    assert local.model_dir == tmp_path / "whisper-tiny"  # relative = under the models dir
    remote = create_stt(settings(stt_backend="openai", stt_model="whisper-1",
                                     stt_base_url="http://127.0.0.1:1/v1", stt_api_key=API_KEY))
    assert isinstance(remote, OpenAISTTBackend) and isinstance(remote, STTBackend)
    assert remote.url == "http://127.0.0.1:1/v1/audio/transcriptions"


def test_create_backend_from_real_settings(tmp_path: Path) -> None:
    from chat2audio.settings import Settings

    assert create_stt(Settings(_env_file=None)) is None  # voice input is off by default
    local = create_stt(Settings(_env_file=None, stt_backend="transformers", stt_model="w", models_dir=tmp_path))
    assert isinstance(local, TransformersSTTBackend) and local.model_dir == tmp_path / "w"
    remote = create_stt(Settings(_env_file=None, stt_backend="openai", stt_model="whisper-1",
                                     stt_base_url="http://127.0.0.1:1/v1"))
    assert isinstance(remote, OpenAISTTBackend)


# -- transformers backend on a tiny random Whisper ---------------------------------------------


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")


@pytest.fixture
async def whisper(whisper_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TransformersSTTBackend]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = create_stt(settings(stt_backend="transformers", stt_model=whisper_dir.name,
                                      models_dir=whisper_dir.parent))
    assert isinstance(backend, TransformersSTTBackend)
    backend._max_new_tokens = 12  # a random model never says <|endoftext|>
    await backend.start()
    yield backend
    await backend.stop()


def test_tiny_whisper_layout(whisper_dir: Path) -> None:
    names = {p.name for p in whisper_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= names
    config = json.loads((whisper_dir / "config.json").read_text())
    generation = json.loads((whisper_dir / "generation_config.json").read_text())
    tokens = {t["content"]: t["id"] for t in json.loads((whisper_dir / "tokenizer.json").read_text())["added_tokens"]}
    eot = tokens["<|endoftext|>"]
    assert config["architectures"] == ["WhisperForConditionalGeneration"] and config["num_mel_bins"] == 80
    assert config["vocab_size"] == max(tokens.values()) + 1
    assert generation["decoder_start_token_id"] == eot + 1 == tokens["<|startoftranscript|>"]
    assert generation["lang_to_id"]["<|en|>"] == eot + 2 and len(generation["lang_to_id"]) == 99
    assert generation["no_timestamps_token_id"] == tokens["<|notimestamps|>"] == tokens["<|0.00|>"] - 1
    assert tokens["<|30.00|>"] == config["vocab_size"] - 1


async def test_transformers_transcribes_offline_and_deterministically(whisper: TransformersSTTBackend) -> None:
    assert whisper.device == "cpu" and whisper.load_seconds is not None
    audio = speechlike(3.0)
    first = await whisper.transcribe(audio)
    again = await whisper.transcribe(audio, filename="take2.wav")
    assert isinstance(first, str) and first == first.strip()
    assert first and first == again
    assert isinstance(await whisper.transcribe(encode(tone(2.0, 44100, channels=2), 44100)), str)


async def test_transformers_language(whisper: TransformersSTTBackend) -> None:
    for language in ("zh", "English", "zh-CN"):
        assert isinstance(await whisper.transcribe(speechlike(1.0), language=language), str)
    with pytest.raises(STTError) as info:
        await whisper.transcribe(speechlike(1.0), language="klingon")
    assert info.value.status == 422 and "klingon" in str(info.value)


def spy_on_generate(backend: TransformersSTTBackend, delay_s: float = 0.0) -> dict[str, Any]:
    """Wrap the model's generate() to record concurrency and output lengths."""
    seen: dict[str, Any] = {"active": 0, "max_active": 0, "calls": 0, "lengths": [], "threads": set()}
    lock = threading.Lock()
    real = backend._model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        with lock:
            seen["active"] += 1
            seen["calls"] += 1
            seen["max_active"] = max(seen["max_active"], seen["active"])
            seen["threads"].add(threading.current_thread().name)
        try:
            time.sleep(delay_s)
            out = real(*args, **kwargs)
            seen["lengths"].append(out.shape[-1])
            return out
        finally:
            with lock:
                seen["active"] -= 1

    backend._model.generate = generate
    return seen


async def test_transformers_serializes_and_keeps_the_loop_free(whisper: TransformersSTTBackend) -> None:
    seen = spy_on_generate(whisper, delay_s=0.3)
    async with loop_gaps() as gaps:
        texts = await asyncio.gather(whisper.transcribe(speechlike(2.0, 1)), whisper.transcribe(speechlike(2.0, 2)))
    assert all(isinstance(t, str) for t in texts)
    assert seen["calls"] == 2 and seen["max_active"] == 1  # one at a time on one model
    assert seen["threads"] == {next(iter(seen["threads"]))} and "stt-whisper" in next(iter(seen["threads"]))
    assert max(gaps) < 0.25  # the event loop never waited on the model


async def test_transformers_long_audio_and_bounded_generation(whisper: TransformersSTTBackend) -> None:
    seen = spy_on_generate(whisper)
    text = await whisper.transcribe(speechlike(45.0))  # two 30 s windows
    assert isinstance(text, str)
    assert seen["calls"] == 2
    prompt = 4  # <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>
    assert all(n <= prompt + 12 for n in seen["lengths"])


async def test_transformers_rejects_bad_audio(whisper: TransformersSTTBackend) -> None:
    for data, words in [(b"", "empty"), (b"\x00" * 500, "could not decode"), (speechlike(61.0), "too long")]:
        with pytest.raises(STTError) as info:
            await whisper.transcribe(data)
        assert info.value.status == 422 and words in str(info.value)


async def test_transformers_cancelled_request_frees_the_model(whisper: TransformersSTTBackend) -> None:
    seen = spy_on_generate(whisper, delay_s=0.2)
    task = asyncio.create_task(whisper.transcribe(speechlike(1.0)))
    while seen["active"] == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen["active"] == 0  # returned only once the worker was done
    assert isinstance(await whisper.transcribe(speechlike(1.0)), str)


async def test_transformers_reports_bad_model_dirs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CHAT2AUDIO_STT_MODEL"):
        await TransformersSTTBackend(model_dir=None).start()
    with pytest.raises(STTError, match="not found") as info:
        await TransformersSTTBackend(model_dir=tmp_path / "missing").start()
    assert info.value.status == 503
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(STTError, match="model_type is 'qwen2', not 'whisper'"):
        await TransformersSTTBackend(model_dir=tmp_path / "qwen").start()
    not_started = TransformersSTTBackend(model_dir=tmp_path)
    with pytest.raises(STTError) as info:
        await not_started.transcribe(speechlike(1.0))
    assert info.value.status == 503


# -- openai backend against a stub server ------------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAISTTStub]:
    with OpenAISTTStub(api_key=API_KEY, stall_s=2.0) as server:
        yield server


async def remote(base_url: str, model: str = "whisper-1", **kw: Any) -> OpenAISTTBackend:
    options: dict[str, Any] = {"api_key": API_KEY, "timeout_s": 5.0}
    options.update(kw)
    backend = OpenAISTTBackend(base_url=base_url, model=model, **options)
    await backend.start()
    return backend


async def test_openai_sends_multipart_and_returns_text(stub: OpenAISTTStub) -> None:
    backend = await remote(stub.base_url, language="en")
    try:
        audio = speechlike(1.0)
        assert await backend.transcribe(audio, filename="C:\\Users\\me\\clip.wav") == DEFAULT_TRANSCRIPT.strip()
        request = stub.requests[-1]
        assert (request.method, request.path) == ("POST", "/v1/audio/transcriptions")
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        upload = request.fields["file"]
        assert upload.content == audio
        assert (upload.filename, upload.content_type) == ("clip.wav", "audio/wav")
        assert request.fields["model"].text == "whisper-1"
        assert request.fields["language"].text == "en"
        assert request.fields["response_format"].text == "json"

        # No filename: one is made up from the bytes; the per-call language wins.
        await backend.transcribe(encode(tone(0.5, 16000), 16000, "FLAC"), language="zh")
        request = stub.requests[-1]
        assert (request.fields["file"].filename, request.fields["file"].content_type) == ("audio.flac", "audio/flac")
        assert request.fields["language"].text == "zh"
    finally:
        await backend.stop()


async def test_openai_without_language_or_key(stub: OpenAISTTStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")  # for api.openai.com, never sent here
    backend = await remote(stub.base_url, api_key=None)
    try:
        with pytest.raises(STTError) as info:  # this stub insists on its key
            await backend.transcribe(speechlike(0.5))
        assert info.value.status == 502 and "HTTP 401" in str(info.value)
        request = stub.requests[-1]
        assert "authorization" not in request.headers and "language" not in request.fields
    finally:
        await backend.stop()


@pytest.mark.parametrize(
    ("scenario", "status", "words"),
    [
        ("400", 502, "STT server returned HTTP 400: Invalid file format. Supported formats: wav, mp3"),
        ("401", 502, "HTTP 401: Incorrect API key provided: ***."),
        ("429", 503, "HTTP 429: Rate limit reached"),
        ("500", 502, "HTTP 500: upstream exploded"),
        ("not-json", 502, "sent no transcript"),
    ],
)
async def test_openai_upstream_errors(stub: OpenAISTTStub, scenario: str, status: int, words: str) -> None:
    backend = await remote(stub.base_url, model=f"stub-{scenario}")
    try:
        with pytest.raises(STTError) as info:
            await backend.transcribe(speechlike(0.5))
    finally:
        await backend.stop()
    assert info.value.status == status
    assert words in str(info.value)
    assert API_KEY not in str(info.value)


async def test_openai_slow_server_times_out(stub: OpenAISTTStub) -> None:
    backend = await remote(stub.base_url, model="stub-slow", timeout_s=0.3)
    try:
        started = time.perf_counter()
        with pytest.raises(STTError) as info:
            await backend.transcribe(speechlike(0.5))
        assert time.perf_counter() - started < 1.5
    finally:
        await backend.stop()
    assert info.value.status == 504 and "did not answer within 0.3 s" in str(info.value)


async def test_openai_unreachable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = await remote(f"http://user:{API_KEY}@127.0.0.1:{port}/v1")
    try:
        with pytest.raises(STTError) as info:
            await backend.transcribe(speechlike(0.5))
    finally:
        await backend.stop()
    assert info.value.status == 503 and "unreachable (connection refused)" in str(info.value)
    assert API_KEY not in str(info.value)


async def test_openai_checks_audio_before_sending(stub: OpenAISTTStub) -> None:
    backend = await remote(stub.base_url, max_audio_seconds=2.0)
    sent = len(stub.requests)
    try:
        for data, words in [(b"", "empty"), (speechlike(3.0), "too long: 3.0 s long; the limit is 2 s")]:
            with pytest.raises(STTError) as info:
                await backend.transcribe(data)
            assert info.value.status == 422 and words in str(info.value)
        assert len(stub.requests) == sent
        # What soundfile cannot read (a browser's WebM) goes to the server, which decodes more.
        webm = b"\x1a\x45\xdf\xa3" + b"\x00" * 64
        assert await backend.transcribe(webm) == DEFAULT_TRANSCRIPT.strip()
        assert stub.requests[-1].fields["file"].filename == "audio.webm"
    finally:
        await backend.stop()


def test_upload_name() -> None:
    assert upload_name("../../etc/voice.ogg", b"OggS...") == ("voice.ogg", "audio/ogg")
    assert upload_name("memo", b"ID3\x04") == ("memo.mp3", "audio/mpeg")
    assert upload_name(None, b"\x00\x00\x00\x20ftypM4A ") == ("audio.m4a", "audio/mp4")
    assert upload_name(None, b"????") == ("audio", "application/octet-stream")


async def test_openai_start_checks_configuration() -> None:
    for kw, words in [({"base_url": None, "model": "m"}, "CHAT2AUDIO_STT_BASE_URL"),
                      ({"base_url": "ftp://x/v1", "model": "m"}, "http(s) URL"),
                      ({"base_url": "http://x/v1", "model": None}, "CHAT2AUDIO_STT_MODEL")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            await OpenAISTTBackend(**kw).start()
