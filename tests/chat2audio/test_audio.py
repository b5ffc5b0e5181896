"""Audio encoding: complete WAVs and streamed WAVs are readable, exact and the right rate."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile

from chat2audio.audio import UNKNOWN_SIZE, streaming_wav_header, to_pcm16, wav_bytes


def tone(seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_complete_wav_has_rate_length_and_samples():
    audio = tone(1.25, 22050)
    decoded, rate = soundfile.read(io.BytesIO(wav_bytes(audio, 22050)), dtype="float32")
    assert rate == 22050
    assert decoded.shape == audio.shape
    assert np.abs(decoded - audio).max() < 1e-4


def test_streamed_wav_header_then_chunks_reads_back_exactly():
    audio = tone(0.7, 32000)
    parts = np.array_split(audio, 5)
    header = streaming_wav_header(32000)
    assert len(header) == 44
    assert struct.unpack("<I", header[4:8])[0] == UNKNOWN_SIZE
    assert struct.unpack("<I", header[40:44])[0] == UNKNOWN_SIZE
    stream = header + b"".join(to_pcm16(p) for p in parts)
    decoded, rate = soundfile.read(io.BytesIO(stream), dtype="float32")
    assert rate == 32000
    assert decoded.shape == audio.shape
    assert np.abs(decoded - audio).max() < 1e-4


def test_pcm16_clips_out_of_range_and_silences_nan():
    pcm = np.frombuffer(to_pcm16(np.array([2.0, -3.0, np.nan, 0.5], dtype=np.float32)), dtype="<i2")
    assert pcm.tolist() == [32767, -32767, 0, 16383]


def test_empty_audio_is_still_a_valid_wav():
    decoded, rate = soundfile.read(io.BytesIO(wav_bytes(np.zeros(0, dtype=np.float32), 16000)))
    assert rate == 16000 and decoded.size == 0
