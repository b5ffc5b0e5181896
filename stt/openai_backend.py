"""STT backend `openai`: transcribes on a remote OpenAI-compatible server (OpenAI, vLLM,
faster-whisper-server, LocalAI, …) through `POST {base_url}/audio/transcriptions`."""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from pathlib import PurePath
from typing import Any

import openai

from chat2audio.runtime.upstream import UpstreamClient
from stt.base import STTError, audio_duration

log = logging.getLogger(__name__)

# Leading bytes → (file extension, MIME type), so the server, which often goes by the file
# name, is told the right format when the client sent none.
_SIGNATURES: list[tuple[bytes, int, str, str]] = [
    (b"RIFF", 0, "wav", "audio/wav"),
    (b"fLaC", 0, "flac", "audio/flac"),
    (b"OggS", 0, "ogg", "audio/ogg"),
    (b"ID3", 0, "mp3", "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", 0, "webm", "audio/webm"),  # browsers' MediaRecorder
    (b"ftyp", 4, "m4a", "audio/mp4"),  # Safari's MediaRecorder
]


def upload_name(filename: str | None, data: bytes) -> tuple[str, str]:
    """The file name and MIME type to upload `data` under."""
    sniffed = next(((ext, mime) for magic, at, ext, mime in _SIGNATURES if data[at : at + len(magic)] == magic), None)
    if sniffed is None and len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        sniffed = ("mp3", "audio/mpeg")  # an MPEG audio frame without an ID3 tag
    # Only the base name: a client's path says nothing the server needs.
    name = PurePath((filename or "").replace("\\", "/")).name.strip() or "audio"
    if sniffed and not PurePath(name).suffix:
        name = f"{name}.{sniffed[0]}"
    mime = sniffed[1] if sniffed else (mimetypes.guess_type(name)[0] or "application/octet-stream")
    return name, mime


class OpenAISTTBackend(UpstreamClient):
    """Sends each recording to an OpenAI-compatible transcription endpoint."""

    name = "openai"
    kind = "STT"
    endpoint = "/audio/transcriptions"
    example_url = "http://127.0.0.1:8002/v1"
    example_model = "whisper-1 or openai/whisper-large-v3"

    def __init__(self, *, language: str | None = None, max_audio_seconds: float = 60.0, **connection: Any) -> None:
        """`connection`: the keyword arguments of `UpstreamClient` (base_url, model, api_key, …)."""
        super().__init__(**connection)
        self._default_language = language or None
        self._max_audio_seconds = max_audio_seconds

    async def transcribe(self, audio: bytes, *, filename: str | None = None, language: str | None = None) -> str:
        """The transcript the server returns, stripped."""
        client = self._started_client()
        await self._check_audio(audio)
        name, mime = upload_name(filename, audio)
        language = (language or self._default_language or "").strip()
        try:
            result = await client.audio.transcriptions.create(
                file=(name, audio, mime),
                model=str(self._model),
                response_format="json",
                language=language or openai.omit,
                extra_headers=self._headers,
            )
        except openai.APIError as exc:
            message, status = self._failure(exc)
            raise STTError(message, status=status) from exc
        except ValueError as exc:  # a 200 whose body is not the JSON it claims to be
            log.warning("STT server at %s sent an unreadable answer: %r", self.url, exc)
            result = None
        text = getattr(result, "text", None)
        if not isinstance(text, str):
            raise STTError(f"the STT server at {self.url} sent no transcript (expected JSON with a 'text' field)")
        return text.strip()

    async def _check_audio(self, audio: bytes) -> None:
        """Refuse empty and over-long audio here; formats soundfile cannot read (WebM, M4A) go
        to the server unchecked, since servers decode with ffmpeg."""
        if not audio:
            raise STTError("the audio upload is empty (0 bytes)", status=422)
        seconds = await asyncio.to_thread(audio_duration, audio)
        if seconds is None:
            return
        if seconds <= 0:
            raise STTError("the audio holds no samples (0 s long)", status=422)
        if seconds > self._max_audio_seconds:
            raise STTError(
                f"the audio is too long: {seconds:.1f} s long; the limit is {self._max_audio_seconds:g} s", status=422
            )
