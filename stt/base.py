"""The one interface every speech-to-text backend implements (audio bytes in, text out), and the
audio decoding they share."""

from __future__ import annotations

import io
import logging
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

# Below this, an upload is not speech audio but a mislabelled file (and resampling it is absurd).
MIN_SAMPLE_RATE = 4000


class STTError(Exception):
    """Transcription failed; `status` is the HTTP status to report.

    422: the audio itself is at fault (undecodable, empty, too long, unsupported language);
    502/503/504: the engine or the upstream server is.
    """

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class STTBackend(Protocol):
    """Turns one recorded utterance into text."""

    name: str

    async def start(self) -> None:
        """Load models or open clients; called once from the app's lifespan."""

    async def stop(self) -> None:
        """Release what `start` acquired."""

    async def transcribe(self, audio: bytes, *, filename: str | None = None, language: str | None = None) -> str:
        """The text spoken in `audio` (an encoded file), stripped; "" when nothing was recognised.

        `filename` is a hint to the format; `language` (e.g. "en", "zh") overrides the configured
        default, None = the backend's default (detection where it has one).
        """
        ...


def _soundfile():
    import soundfile

    return soundfile


def audio_duration(data: bytes) -> float | None:
    """Seconds of audio according to the file's header, or None if soundfile cannot read it."""
    sf = _soundfile()
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return f.frames / f.samplerate if f.samplerate > 0 else None
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError):
        return None


def decode_audio(data: bytes, *, target_rate: int = 16000, max_seconds: float) -> np.ndarray:
    """Decode a WAV/FLAC/OGG/MP3 file to float32 mono at `target_rate`.

    Raises STTError(422) naming the problem when the bytes are not audio, hold no samples, or
    last longer than `max_seconds`. Never reads more than `max_seconds` (plus one frame), so a
    header that lies about its length costs nothing.
    """
    if not data:
        raise STTError("the audio upload is empty (0 bytes)", status=422)
    sf = _soundfile()
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            if rate < MIN_SAMPLE_RATE:
                raise STTError(
                    f"the audio's sample rate ({rate} Hz) is too low for speech; use at least {MIN_SAMPLE_RATE} Hz",
                    status=422,
                )
            limit = int(max_seconds * rate)
            header_frames = f.frames
            # Compressed formats may not know their length up front: read one frame past the
            # limit and judge by what came out.
            samples = f.read(frames=limit + 1, dtype="float32", always_2d=True)
    except STTError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        log.debug("undecodable audio upload (%d bytes): %r", len(data), exc)
        raise STTError(
            "could not decode the audio: send a WAV, FLAC, OGG (Vorbis/Opus) or MP3 file", status=422
        ) from None
    if len(samples) > limit:
        length = f"{header_frames / rate:.1f} s long" if header_frames > limit else f"longer than {max_seconds:g} s"
        raise STTError(f"the audio is too long: {length}; the limit is {max_seconds:g} s", status=422)
    if len(samples) == 0:
        raise STTError("the audio holds no samples (0 s long)", status=422)
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise STTError("the audio contains invalid samples (NaN or infinity)", status=422)
    if rate != target_rate:
        mono = _resample(mono, rate, target_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    import torch
    from torchaudio.functional import resample

    with torch.inference_mode():
        return resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, target_rate).numpy()
