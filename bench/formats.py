"""Time to first audio per output format: what a compressed stream costs a listener.

Each format's stream is read as a client would; its first audio is the first body byte (after the
44-byte header, for WAV). Measured through `/chat2audio` (a reply: LLM + TTS + encoder) and
`/v1/audio/speech` (a given text: TTS + encoder only, where the codec's share shows best).
"""

from __future__ import annotations

import statistics
import time

import httpx

FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac", "ogg")
SPEECH_FORMATS = {"wav", "pcm", "mp3", "opus", "aac", "flac"}  # what OpenAI's API offers
WAV_HEADER_BYTES = 44


def first_audio(base_url: str, path: str, body: dict, *, skip: int = 0) -> tuple[float, float, int]:
    """(seconds to the first audio byte, seconds to the end, bytes) of one streamed response;
    `skip` header bytes are not audio."""
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        first, size = None, 0
        with client.stream("POST", f"{base_url}{path}", json=body) as response:
            response.raise_for_status()
            for chunk in response.iter_raw():
                size += len(chunk)
                if first is None and size > skip:
                    first = time.perf_counter() - started
        return first if first is not None else float("nan"), time.perf_counter() - started, size


def format_rows(base_url: str, chat_body: dict, speech_text: str, voice: str, repeats: int) -> list[list[str]]:
    """One row per format: median TTFA and total over `repeats`, through both routes, and the
    ratio to WAV's TTFA measured in the same run."""
    measured: dict[str, dict[str, tuple[float, float, int]]] = {}
    for audio_format in FORMATS:
        skip = WAV_HEADER_BYTES if audio_format == "wav" else 0
        chat = [first_audio(base_url, "/chat2audio", {**chat_body, "format": audio_format}, skip=skip) for _ in range(repeats)]
        runs = {"chat": _median_run(chat)}
        if audio_format in SPEECH_FORMATS:
            body = {"input": speech_text, "voice": voice, "response_format": audio_format}
            runs["speech"] = _median_run([first_audio(base_url, "/v1/audio/speech", body, skip=skip) for _ in range(repeats)])
        measured[audio_format] = runs
    wav = measured["wav"]
    rows = []
    for audio_format, runs in measured.items():
        row = [audio_format]
        for route in ("chat", "speech"):
            if route not in runs:
                row += ["-", "-", "-"]
                continue
            ttfa, total, size = runs[route]
            row += [f"{ttfa:.3f}", f"{ttfa - wav[route][0]:+.3f}", f"{total:.3f} s / {size // 1024} KiB"]
        rows.append(row)
    return rows


FORMAT_HEADER = [
    "format", "/chat2audio TTFA", "vs WAV", "/chat2audio total / size",
    "/v1/audio/speech TTFA", "vs WAV", "/v1/audio/speech total / size",
]


def _median_run(runs: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    middle = statistics.median_low([run[0] for run in runs])
    return next(run for run in runs if run[0] == middle)
