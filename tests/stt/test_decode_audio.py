"""decode_audio against hostile uploads: files that are tiny on the wire but huge once decoded
(many channels at a high rate), headers that lie, and sample rates that blow up the resampler; and
on what browsers record (WebM/Opus, MP4/AAC, made here by Debian's ffmpeg), which FFmpeg decodes."""

from __future__ import annotations

import io
import struct
import subprocess
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional  # imported up front so that its import never counts toward a measured peak

from stt import base
from stt.base import MAX_RESAMPLE_KERNEL, STTError, _read_mono, _resample_ratio, decode_audio
from tests.ffmpeg import dominant_hz, needs_ffmpeg

MiB = 1 << 20


def silent_flac(seconds: float, rate: int = 192000, channels: int = 8) -> bytes:
    """`seconds` of silence as 16-bit FLAC, encoded a second at a time so the test itself stays small."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        second = np.zeros((rate, channels), np.float32)
        for _ in range(int(seconds)):
            f.write(second)
    return buffer.getvalue()


def claim_frames(flac: bytes, frames: int) -> bytes:
    """The FLAC with STREAMINFO's total-samples field (the low 36 bits of bytes 18..25) set to `frames`."""
    (packed,) = struct.unpack(">Q", flac[18:26])
    packed = (packed & ~((1 << 36) - 1)) | frames
    return flac[:18] + struct.pack(">Q", packed) + flac[26:]


def decode_with_peak(data: bytes, *, max_seconds: float) -> tuple[np.ndarray, int]:
    """decode_audio's result and the peak bytes that Python and numpy allocated meanwhile."""
    tracemalloc.start()
    try:
        out = decode_audio(data, max_seconds=max_seconds)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@pytest.mark.parametrize("seconds", [20, 60])
def test_many_channel_flac_decodes_in_bounded_memory(seconds: int) -> None:
    # 8 channels at 192 kHz: 117 MiB of float32 per 20 s, yet ~30 KiB per 20 s on the wire.
    data = silent_flac(seconds)
    assert len(data) < 5 * 1024 * seconds
    out, peak = decode_with_peak(data, max_seconds=60)
    assert len(out) == seconds * 16000 and not out.any()
    # One mono copy at the source rate, plus slack; reading all channels at once costs 8 times that.
    mono = seconds * 192000 * 4
    assert peak < mono + 16 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_header_claiming_the_limit_costs_at_most_the_limit() -> None:
    # 20 s of audio whose header claims 60 s: libsndfile fails where the audio ends.
    data = claim_frames(silent_flac(20), 60 * 192000)
    tracemalloc.start()
    try:
        with pytest.raises(STTError) as info:
            decode_audio(data, max_seconds=60)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 422 and "could not decode" in str(info.value)
    assert peak < 60 * 192000 * 4 + 16 * MiB, f"peak {peak / MiB:.1f} MiB"  # not 8 channels' worth


def test_downmix_across_blocks_matches_whole_file(monkeypatch: pytest.MonkeyPatch) -> None:
    rate, channels = 48000, 8
    t = np.arange(int(2.5 * rate)) / rate
    samples = np.zeros((len(t), channels), np.float32)
    samples[:, 3] = 0.8 * np.sin(2 * np.pi * 440 * t)  # sound in one channel only
    # 1000 samples is 125 frames of 8 channels: 960 reads, the last one short.
    monkeypatch.setattr(base, "BLOCK_SAMPLES", 1000)
    out = decode_audio(wav(samples, rate), max_seconds=5)
    expected = torchaudio.functional.resample(torch.from_numpy(samples.mean(axis=1, dtype=np.float32)), rate, 16000)
    assert len(out) == 40000
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)
    assert 0.09 < np.abs(out).max() < 0.11  # 0.8 averaged over 8 channels


def test_too_long_is_rejected_while_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "BLOCK_SAMPLES", 4096)
    data = wav(np.zeros((3 * 48000, 6), np.float32), 48000)
    with pytest.raises(STTError) as info:
        decode_audio(data, max_seconds=2)
    assert info.value.status == 422
    assert "too long: 3.0 s long; the limit is 2 s" in str(info.value)


class ArrayFile:
    """Stands in for an open SoundFile whose header claims `claimed` frames; counts what is read."""

    def __init__(self, samples: np.ndarray, claimed: int) -> None:
        self.samples, self.frames, self.channels, self.read_frames = samples, claimed, samples.shape[1], 0

    def read(self, *, frames: int, dtype: str, always_2d: bool, out: np.ndarray) -> np.ndarray:
        got = self.samples[self.read_frames : self.read_frames + min(frames, len(out))]
        out[: len(got)] = got
        self.read_frames += len(got)
        return out[: len(got)]


@pytest.mark.parametrize("claimed", [0, 10, 5000, 10**12], ids=["unknown", "under", "honest", "over"])
def test_read_mono_whatever_the_header_claims(monkeypatch: pytest.MonkeyPatch, claimed: int) -> None:
    monkeypatch.setattr(base, "BLOCK_SAMPLES", 300)
    samples = np.random.default_rng(0).standard_normal((5000, 3)).astype(np.float32)
    expected = samples.mean(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(_read_mono(ArrayFile(samples, claimed), 10**6), expected)
    # Past the limit it stops after the one frame that proves the file too long.
    source = ArrayFile(samples, claimed)
    assert len(_read_mono(source, 1001)) == 1001 and source.read_frames == 1001


def test_sample_rate_above_the_cap_is_rejected() -> None:
    with pytest.raises(STTError) as info:
        decode_audio(wav(np.zeros(768000, np.float32), 768000), max_seconds=2)
    assert info.value.status == 422
    assert "sample rate (768000 Hz) is too high" in str(info.value)


def test_odd_sample_rate_resamples_with_a_small_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # 44101 Hz shares no factor with 16 kHz: the exact ratio needs an 11 GiB sinc kernel.
    real = torchaudio.functional.resample

    def checked(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
        ratio = Fraction(orig_freq, new_freq)
        assert ratio.numerator * ratio.denominator <= MAX_RESAMPLE_KERNEL, f"kernel for {orig_freq}/{new_freq}"
        return real(waveform, orig_freq, new_freq)

    monkeypatch.setattr(torchaudio.functional, "resample", checked)
    rate = 44101
    t = np.arange(rate) / rate
    out = decode_audio(wav((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate), max_seconds=2)
    assert abs(len(out) - 16000) <= 2
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out) - 440) < 1.5


@pytest.mark.parametrize("target", [16000, 8000, 24000])
def test_resample_ratio_is_exact_for_standard_rates_and_close_for_odd_ones(target: int) -> None:
    for rate in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000, 352800, 384000):
        assert Fraction(*_resample_ratio(rate, target)) == Fraction(rate, target)
    for rate in list(range(base.MIN_SAMPLE_RATE, base.MAX_SAMPLE_RATE + 1, 997)) + [4001, 44101, 383999]:
        p, q = _resample_ratio(rate, target)
        assert p * q <= MAX_RESAMPLE_KERNEL
        assert abs(Fraction(p, q) / Fraction(rate, target) - 1) < 1e-3


# -- what browsers record (WebM/Opus, MP4/AAC): soundfile cannot open it, FFmpeg (PyAV) decodes it


def ffmpeg_encode(samples: np.ndarray, rate: int, *args: str, to_file: Path | None = None) -> bytes:
    """`samples` (frames × channels float32) encoded by Debian's ffmpeg with the output options `args`,
    written to a pipe as MediaRecorder writes (no length, no index), or to `to_file` (seekable: with both)."""
    samples = samples.reshape(len(samples), -1)
    head = ["-f", "f32le", "-ar", str(rate), "-ac", str(samples.shape[1]), "-i", "pipe:"]
    out = [str(to_file), "-y"] if to_file else ["pipe:"]
    run = subprocess.run(
        ["ffmpeg", "-v", "error", *head, *args, *out],
        input=samples.astype("<f4").tobytes(), capture_output=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return to_file.read_bytes() if to_file else run.stdout


def sine(seconds: float, rate: int = 48000, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


WEBM_OPUS = ("-c:a", "libopus", "-f", "webm")  # Chrome's and Firefox's MediaRecorder
MP4_AAC = ("-c:a", "aac", "-movflags", "frag_keyframe+empty_moov", "-f", "mp4")  # Safari's (fragmented)
MKV_PCM16 = ("-c:a", "pcm_s16le", "-f", "matroska")
MKV_FLOAT = ("-c:a", "pcm_f32le", "-f", "matroska")


@needs_ffmpeg
@pytest.mark.parametrize(("args", "rate"), [(WEBM_OPUS, 48000), (MP4_AAC, 44100)], ids=["webm-opus", "mp4-aac"])
def test_browser_recording_decodes_to_mono_at_the_target_rate(args: tuple[str, ...], rate: int) -> None:
    data = ffmpeg_encode(sine(2.5, rate), rate, *args)
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))  # what the FFmpeg path is for
    out = decode_audio(data, max_seconds=5)
    assert out.dtype == np.float32 and out.ndim == 1
    # AAC adds its 1024-sample priming, Opus nothing (its pre-skip is trimmed).
    assert 2.5 * 16000 <= len(out) <= 2.5 * 16000 + 0.07 * 16000, len(out)
    assert 0.45 < np.abs(out[1600:-1600]).max() < 0.55  # (AAC rings where the tone stops dead)
    assert dominant_hz(out, 16000) == pytest.approx(440, abs=2)


@needs_ffmpeg
def test_ffmpeg_path_downmixes_like_the_soundfile_path() -> None:
    stereo = np.stack([sine(1.0), np.zeros(48000, np.float32)], axis=1)  # sound on the left only
    out = decode_audio(ffmpeg_encode(stereo, 48000, *MKV_FLOAT), max_seconds=2)
    expected = decode_audio(wav(stereo, 48000), max_seconds=2)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@needs_ffmpeg
def test_over_long_recording_is_refused_after_the_limit_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    frames_of = base._audio_frames

    def counted(container):
        for frame in frames_of(container):
            decoded.append(frame.samples)
            yield frame

    monkeypatch.setattr(base, "_audio_frames", counted)
    data = ffmpeg_encode(sine(10.0), 48000, *WEBM_OPUS)
    with pytest.raises(STTError) as info:
        decode_audio(data, max_seconds=2)
    assert info.value.status == 422 and "too long: longer than 2 s; the limit is 2 s" in str(info.value)
    # 2 s and the one frame (20 ms of Opus) that proves it longer: not the other 8 s.
    assert 2 * 48000 < sum(decoded) <= 2 * 48000 + max(decoded)


@needs_ffmpeg
@pytest.mark.parametrize(("claimed_s", "actual_s"), [(1.0, 3.0), (100.0, 1.0)], ids=["under", "over"])
def test_container_length_is_not_trusted(tmp_path: Path, claimed_s: float, actual_s: float) -> None:
    # A seekable WebM carries its Duration (EBML id 0x4489, an 8-byte float of milliseconds): make it lie.
    data = ffmpeg_encode(sine(actual_s), 48000, *WEBM_OPUS, to_file=tmp_path / "lying.webm")
    at = data.index(b"\x44\x89\x88") + 3
    data = data[:at] + struct.pack(">d", claimed_s * 1000) + data[at + 8 :]
    if actual_s > 2:
        with pytest.raises(STTError) as info:
            decode_audio(data, max_seconds=2)
        assert "too long: longer than 2 s" in str(info.value)
    else:
        assert len(decode_audio(data, max_seconds=2)) == actual_s * 16000


@needs_ffmpeg
def test_a_cut_off_recording_is_decoded_as_far_as_it_goes() -> None:
    # An upload cut mid-way (a dropped connection, a recorder stopped hard) still holds the speech
    # before the cut; WebM has no index that the cut would break.
    data = ffmpeg_encode(sine(2.0), 48000, *WEBM_OPUS)
    out = decode_audio(data[: len(data) // 2], max_seconds=5)
    assert 0.5 * 16000 < len(out) < 1.5 * 16000


def webm_cut(into_first_cluster: int) -> bytes:
    """A WebM recording cut `into_first_cluster` bytes after its headers (EBML id 0x1F43B675 starts a cluster)."""
    data = ffmpeg_encode(sine(1.0), 48000, *WEBM_OPUS)
    return data[: data.index(b"\x1f\x43\xb6\x75") + into_first_cluster]


@needs_ffmpeg
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: b"\x1a\x45\xdf\xa3" + b"not a webm at all" * 20, "could not decode the audio: send a WAV, FLAC, OGG"),
        (lambda: webm_cut(0), "the file ends before its first sound"),
        (lambda: ffmpeg_encode(sine(3.0), 44100, *MP4_AAC)[:-20000], "the QuickTime / MOV file is damaged 1."),
        (lambda: webm_cut(20), "no samples"),
        (lambda: ffmpeg_encode(sine(1.0, 1000), 1000, *MKV_PCM16), "sample rate (1000 Hz) is too low"),
        (lambda: ffmpeg_encode(np.full(4800, np.nan, np.float32), 48000, *MKV_FLOAT), "NaN"),
    ],
    ids=["garbage", "headers-only", "damaged", "no-samples", "low-rate", "nan"],
)
def test_broken_recording_is_a_422_naming_the_problem(make, words: str) -> None:
    with pytest.raises(STTError) as info:
        decode_audio(make(), max_seconds=5)
    assert info.value.status == 422
    assert words in str(info.value)


def test_only_self_contained_containers_are_opened() -> None:
    # A playlist or concat list would have FFmpeg open other files or URLs: never for an upload.
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/hostname\n#EXT-X-ENDLIST\n"
    concat = b"ffconcat version 1.0\nfile '/etc/hostname'\n"
    for data in (playlist, concat):
        with pytest.raises(STTError) as info:
            decode_audio(data, max_seconds=5)
        assert info.value.status == 422 and "could not decode" in str(info.value)
