"""Decoding with Debian's ffmpeg, a client nobody here wrote (installed by scripts/setup.sh --test)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is missing: run scripts/setup.sh --test")


def decode(data: bytes, *, rate: int, input_format: str | None = None) -> np.ndarray:
    """The audio in `data` as float32 mono at `rate` (ffmpeg resamples); `input_format` for
    headerless input, e.g. "s16le" (then give the input's own rate as `rate`)."""
    head = ["-f", input_format, "-ar", str(rate), "-ac", "1"] if input_format else []
    run = subprocess.run(
        ["ffmpeg", "-v", "error", *head, "-i", "pipe:", "-f", "f32le", "-ac", "1", "-ar", str(rate), "pipe:"],
        input=data, capture_output=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return np.frombuffer(run.stdout, dtype="<f4")


def probe(data: bytes) -> dict:
    """ffprobe's view of the first audio stream: codec_name, sample_rate, … and the container."""
    run = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels:format=format_name", "-of", "json", "pipe:"],
        input=data, capture_output=True, timeout=60, check=True,
    )
    found = json.loads(run.stdout)
    return {**found["streams"][0], "format_name": found["format"]["format_name"]}


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[int(np.argmax(spectrum))])
