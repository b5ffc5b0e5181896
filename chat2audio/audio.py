"""Audio encoding: float32 samples → 16-bit PCM, complete WAV files and streamable WAV headers;
and the mouth envelope an avatar moves its lips by."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile

from chat2audio.runtime.audio import clean_audio

# RIFF and data sizes of a stream whose length is not known when the header is sent. ffmpeg,
# sox and libsndfile read such a file up to its real end.
UNKNOWN_SIZE = 0xFFFFFFFF


def to_pcm16(audio: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM; values outside [-1, 1] are clipped, NaN becomes silence."""
    return (clean_audio(audio) * 32767.0).astype("<i2").tobytes()


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """One complete mono 16-bit WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, clean_audio(audio), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def streaming_wav_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte WAV header for PCM that follows in chunks, its sizes marked unknown."""
    block_align = channels * bits // 8
    return (
        b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits)
        + b"data" + struct.pack("<I", UNKNOWN_SIZE)
    )


MOUTH_FRAME_S = 0.02  # an avatar's mouth follows the audio in 20 ms steps


def mouth_envelope(audio: np.ndarray, sample_rate: int) -> list[float]:
    """How open the mouth is over each `MOUTH_FRAME_S` of `audio`, in [0, 1]: its loudness (RMS)
    relative to the loudest frame, rounded to hundredths (a lip-sync client needs no more)."""
    frame = max(1, round(MOUTH_FRAME_S * sample_rate))
    if audio.size == 0:
        return []
    padded = np.pad(clean_audio(audio), (0, -audio.size % frame))
    loudness = np.sqrt((padded.reshape(-1, frame).astype(np.float64) ** 2).mean(axis=1))
    peak = loudness.max()
    return [round(float(value), 2) for value in (loudness / peak if peak > 0 else loudness)]
