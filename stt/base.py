"""The one interface every speech-to-text backend implements (audio bytes in, text out), and the
audio decoding they share: soundfile (libsndfile) for WAV/FLAC/OGG/MP3, PyAV (FFmpeg) for what
browsers record (WebM or MP4) and whatever else libsndfile cannot open."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np

from chat2audio.runtime.errors import EngineError

log = logging.getLogger(__name__)

# Below this, an upload is not speech audio but a mislabelled file (and resampling it is absurd).
MIN_SAMPLE_RATE = 4000
# Above this (the highest rate studio formats use), the decoded mono track alone would outgrow
# `max_seconds` of ordinary audio many times over; nothing a microphone sends needs more.
MAX_SAMPLE_RATE = 384000
# Samples (frames × channels) decoded per read: the only multichannel buffer, 2 MiB of float32,
# however many channels the file has. A whole 20 s, 8-channel, 192 kHz FLAC of silence is 30 KiB
# on the wire but 117 MiB as float32, so the file is never held undownmixed.
BLOCK_SAMPLES = 1 << 19
# torchaudio's resampler builds a sinc kernel of about p × q floats for the reduced ratio
# p/q = rate/target: standard rates reduce to small terms (44.1 kHz → 16 kHz is 441/160), but a
# rate sharing few factors with the target explodes it (44101 Hz → 16 kHz: 11 GiB and 30 s).
MAX_RESAMPLE_KERNEL = 1 << 20
# The FFmpeg demuxers an upload may use: containers that hold their audio in the bytes given.
# Others (playlists, concat lists, image sequences) open further files or URLs on their own.
AV_FORMATS = "matroska,webm,mov,mp4,m4a,ogg,mp3,aac"
UNREADABLE = "could not decode the audio: send a WAV, FLAC, OGG, MP3, WebM or MP4 (M4A) file"


class STTError(EngineError):
    """Transcription failed; `status` is the HTTP status to report.

    422: the audio itself is at fault (undecodable, empty, too long, unsupported language);
    502/503/504: the engine or the upstream server is.
    """

    kind = "speech-to-text"
    default_status = 502


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
    """Decode an audio file (WAV/FLAC/OGG/MP3, or WebM/MP4 as browsers record) to float32 mono at
    `target_rate`.

    Raises STTError(422) naming the problem when the bytes are not audio, hold no samples, or
    last longer than `max_seconds`. Never reads more than `max_seconds` (plus one frame) and never
    holds more than one block of the channels, so a header that lies about its length, or a tiny
    file of many channels at a high rate, costs at most `max_seconds` of mono audio.
    """
    if not data:
        raise STTError("the audio upload is empty (0 bytes)", status=422)
    sf = _soundfile()
    try:
        opened = sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        log.debug("soundfile cannot open the upload (%r); trying FFmpeg", exc)
        mono, rate, claimed_seconds = _decode_with_av(data, max_seconds)
    else:
        mono, rate, claimed_seconds = _decode_with_soundfile(opened, len(data), max_seconds)
    limit = int(max_seconds * rate)
    if len(mono) > limit:
        length = f"{claimed_seconds:.1f} s long" if claimed_seconds > max_seconds else f"longer than {max_seconds:g} s"
        raise STTError(f"the audio is too long: {length}; the limit is {max_seconds:g} s", status=422)
    if len(mono) == 0:
        raise STTError("the audio holds no samples (0 s long)", status=422)
    # min/max propagate NaN and reach ±inf without a temporary the size of the track.
    if not (np.isfinite(mono.min()) and np.isfinite(mono.max())):
        raise STTError("the audio contains invalid samples (NaN or infinity)", status=422)
    if rate != target_rate:
        mono = _resample(mono, rate, target_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_with_soundfile(f, size: int, max_seconds: float) -> tuple[np.ndarray, int, float]:
    """(mono, rate, seconds the header claims) of the open SoundFile `f`, at most one frame past
    `max_seconds`."""
    sf = _soundfile()
    try:
        with f:
            rate = f.samplerate
            _check_rate(rate)
            # Compressed formats may not know their length up front: read one frame past the
            # limit and judge by what came out.
            return _read_mono(f, int(max_seconds * rate) + 1), rate, f.frames / rate
    except STTError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        log.debug("undecodable audio upload (%d bytes): %r", size, exc)
        raise STTError(UNREADABLE, status=422) from None


def _decode_with_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int, float]:
    """(mono, rate, seconds the container claims) of the first audio track, decoded by FFmpeg
    frame by frame until one frame past `max_seconds`."""
    import av

    try:
        container = av.open(io.BytesIO(data), options={"format_whitelist": AV_FORMATS})
    except av.error.EOFError:
        raise STTError(
            "could not decode the audio: the file ends before its first sound (a cut-off upload?)", status=422
        ) from None
    except (av.FFmpegError, ValueError) as exc:
        log.debug("undecodable audio upload (%d bytes): %r", len(data), exc)
        raise STTError(UNREADABLE, status=422) from None
    with container:
        kind = container.format.long_name  # "Matroska / WebM", "QuickTime / MOV", …
        if not container.streams.audio:
            raise STTError(f"the {kind} file holds no audio track", status=422)
        claimed_seconds = max(container.duration or 0, 0) / av.time_base
        chunks: list[np.ndarray] = []
        total = rate = limit = 0
        # Planar float keeps each frame's rate and channels: the downmix is ours, as for soundfile.
        to_float = av.AudioResampler(format="fltp")
        try:
            for frame in _audio_frames(container):
                if not rate:
                    rate = frame.sample_rate
                    _check_rate(rate)
                    limit = int(max_seconds * rate)
                for planes in to_float.resample(frame):
                    chunks.append(planes.to_ndarray().mean(axis=0, dtype=np.float32))
                    total += len(chunks[-1])
                if total > limit:
                    break
        except (av.FFmpegError, ValueError) as exc:
            log.debug("audio upload damaged after %d samples: %r", total, exc)
            where = f"{total / rate:.1f} s in" if rate else "before its first sound"
            raise STTError(f"could not decode the audio: the {kind} file is damaged {where}", status=422) from None
    return (np.concatenate(chunks) if chunks else np.empty(0, np.float32)), rate or 1, claimed_seconds


def _audio_frames(container) -> Iterator:
    """The decoded frames of the container's first audio track, in order."""
    return container.decode(audio=0)


def _check_rate(rate: int) -> None:
    if rate < MIN_SAMPLE_RATE:
        raise STTError(
            f"the audio's sample rate ({rate} Hz) is too low for speech; use at least {MIN_SAMPLE_RATE} Hz", status=422
        )
    if rate > MAX_SAMPLE_RATE:
        raise STTError(
            f"the audio's sample rate ({rate} Hz) is too high; use at most {MAX_SAMPLE_RATE} Hz", status=422
        )


def _read_mono(f, max_frames: int) -> np.ndarray:
    """Up to `max_frames` frames of the open SoundFile `f` as float32 mono.

    Each block is downmixed as it arrives, so memory peaks at one block plus the mono result, never
    at frames × channels.
    """
    block = np.empty((max(1, BLOCK_SAMPLES // f.channels), f.channels), np.float32)
    # Sized by the header, so an honest file is written in place; a header claiming more than the
    # limit gets the limit (the cost of a genuine file that long), and an under-claim grows it.
    mono = np.empty(min(max(f.frames, 0), max_frames), np.float32)
    total = 0
    while total < max_frames:
        got = f.read(frames=min(len(block), max_frames - total), dtype="float32", always_2d=True, out=block)
        if len(got) == 0:
            break
        end = total + len(got)
        if end > len(mono):
            mono = np.concatenate([mono[:total], np.empty(min(max_frames, 2 * end) - total, np.float32)])
        np.mean(got, axis=1, dtype=np.float32, out=mono[total:end])
        total = end
    return mono[:total]


def _resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    import torch
    from torchaudio.functional import resample

    orig, new = _resample_ratio(rate, target_rate)
    with torch.inference_mode():
        return resample(torch.from_numpy(np.ascontiguousarray(samples)), orig, new).numpy()


def _resample_ratio(rate: int, target_rate: int) -> tuple[int, int]:
    """`rate / target_rate` as (p, q), exact when p × q fits MAX_RESAMPLE_KERNEL, else the closest
    fraction that does: off by under 0.1 % in pitch and length for any rate we accept, which no
    recogniser notices, where the exact ratio of an odd rate could cost gigabytes.
    """
    exact = ratio = Fraction(rate, target_rate)
    while ratio.numerator * ratio.denominator > MAX_RESAMPLE_KERNEL and ratio.denominator > 1:
        ratio = exact.limit_denominator(ratio.denominator // 2)
    return ratio.numerator, ratio.denominator
