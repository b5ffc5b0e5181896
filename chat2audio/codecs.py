"""Streaming audio encoders: float32 mono chunks in, bytes of wav, pcm, mp3, opus, aac, flac or ogg
out, each chunk's bytes ready to send as soon as it is encoded.

The compressed formats are encoded and muxed by PyAV (FFmpeg's libavcodec/libavformat) into an
in-memory, non-seekable sink that is drained after every `encode()`. Latency notes:

- The muxer writes through an AVIO buffer of 32 KiB; `flush_packets=1` empties it after every
  packet, so bytes never wait for the buffer to fill. The container header goes out with the
  first packet.
- The Ogg muxer (opus, ogg) closes a page only once it spans `page_duration`, 1 s by default, and
  always keeps the newest finished page back (so it can mark the last one end-of-stream). Pages
  of 20 ms make that one page one codec packet; the price is ~28 bytes of page header per packet.
  PyAV exposes no muxer flush, so that one packet stays back until the next one or `finish()`.
- LAME's bit reservoir lets a frame spill into the next one, so a frame leaves the encoder only
  after its successor is encoded; it is switched off to save a frame or two of delay.
- FFmpeg's FLAC encoder picks blocks of ~100 ms; 1152-sample blocks hold back less.
- mp3 goes without an ID3v2 tag or Xing/LAME header: both are meant to be rewritten at the end of
  a seekable file, and a stream cannot seek back. For the same reason FLAC's STREAMINFO keeps an
  unknown length and no metadata padding is reserved.

Besides the frame that is filling, each codec holds back its own look-ahead; the measured totals
after a first chunk of 0.3 s are in tests/chat2audio/test_codecs.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from chat2audio.audio import streaming_wav_header, to_pcm16
from chat2audio.runtime.audio import clean_audio

AUDIO_FORMATS: tuple[str, ...] = ("wav", "pcm", "mp3", "opus", "aac", "flac", "ogg")

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # headerless s16le mono
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus: what OpenAI sends as "opus"
    "aac": "audio/aac",  # ADTS frames
    "flac": "audio/flac",
    "ogg": "audio/ogg",  # Ogg Vorbis: what GPT-SoVITS api_v2 sends as "ogg"
}

# Each Ogg page holds one packet; see the module docstring.
OGG_PAGE_MICROSECONDS = 20_000
FLAC_BLOCK_SAMPLES = 1152


@dataclass(frozen=True)
class CodecSpec:
    """How one compressed format is produced: FFmpeg muxer, encoder and their options."""

    muxer: str
    encoder: str
    sample_format: str
    layout: str = "mono"
    encoder_options: dict[str, str] = field(default_factory=dict)
    muxer_options: dict[str, str] = field(default_factory=dict)


_PROMPT_OGG_PAGES = {"page_duration": str(OGG_PAGE_MICROSECONDS)}

CODEC_SPECS: dict[str, CodecSpec] = {
    "mp3": CodecSpec(
        muxer="mp3", encoder="libmp3lame", sample_format="s16p",
        encoder_options={"reservoir": "0"},
        muxer_options={"id3v2_version": "0", "write_xing": "0"},
    ),
    "opus": CodecSpec(muxer="ogg", encoder="libopus", sample_format="flt", muxer_options=_PROMPT_OGG_PAGES),
    "aac": CodecSpec(muxer="adts", encoder="aac", sample_format="fltp"),
    "flac": CodecSpec(
        muxer="flac", encoder="flac", sample_format="s16",
        encoder_options={"frame_size": str(FLAC_BLOCK_SAMPLES)},
        muxer_options={"metadata_header_padding": "0"},
    ),
    # PyAV's wheels carry no libvorbis; FFmpeg's own Vorbis encoder is "experimental" and encodes
    # stereo only, so the mono voice goes into both channels (channel coupling makes the copy cheap).
    "ogg": CodecSpec(
        muxer="ogg", encoder="vorbis", sample_format="fltp", layout="stereo",
        encoder_options={"strict": "experimental"}, muxer_options=_PROMPT_OGG_PAGES,
    ),
}


def supported_rates(audio_format: str) -> tuple[int, ...] | None:
    """The sample rates the format's encoder accepts; None when it takes any rate."""
    spec = CODEC_SPECS.get(audio_format)
    if spec is None:
        return None
    rates = av.Codec(spec.encoder, "w").audio_rates
    return tuple(sorted(rates)) if rates else None


def choose_output_rate(audio_format: str, input_rate: int) -> int:
    """The input rate where the encoder supports it, else the lowest supported rate above it
    (so none of the input's band is cut), else the highest supported rate."""
    rates = supported_rates(audio_format)
    if rates is None or input_rate in rates:
        return input_rate
    return next((rate for rate in rates if rate > input_rate), rates[-1])


class _Sink:
    """A non-seekable file for the muxer: what it writes waits here until drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _Muxer:
    """One FFmpeg encoder and muxer writing into a sink; each call returns what it wrote."""

    def __init__(self, spec: CodecSpec, rate: int) -> None:
        self._sink = _Sink()
        self._fed = False
        self._container = av.open(
            self._sink, "w", format=spec.muxer, container_options={"flush_packets": "1", **spec.muxer_options},
        )
        try:
            self._stream = self._container.add_stream(
                spec.encoder, rate=rate, layout=spec.layout, options=dict(spec.encoder_options),
            )
            self._stream.format = spec.sample_format
            # Opened now rather than at the first mux, so a bad setting fails before a response starts.
            self._stream.codec_context.open()
        except BaseException:
            self.close()
            raise

    def encode(self, frames: list[av.AudioFrame]) -> bytes:
        # The encoder re-chunks to its fixed frame size itself (PyAV feeds it through an
        # AudioResampler with frame_size), so frames of any length can go in.
        for frame in frames:
            self._fed = self._fed or frame.samples > 0
            self._container.mux(self._stream.encode(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        if self._fed:  # FFmpeg's Vorbis encoder never ends a flush that had no input
            self._container.mux(self._stream.encode(None))
        # Header and trailer even without audio: an empty FLAC stream is then a valid file.
        self._container.start_encoding()
        self._container.close()
        return self._sink.drain()

    def close(self) -> None:
        # Closing writes the trailer into the sink, which is thrown away with it.
        with contextlib.suppress(av.FFmpegError):
            self._container.close()


class StreamEncoder:
    """Encodes one audio stream chunk by chunk; `finish()` completes it, `close()` abandons it."""

    def __init__(self, audio_format: str, input_rate: int, *, output_rate: int | None = None) -> None:
        if audio_format not in AUDIO_FORMATS:
            raise ValueError(f"unknown audio format {audio_format!r}; known: {', '.join(AUDIO_FORMATS)}")
        if input_rate <= 0:
            raise ValueError(f"input_rate must be positive, got {input_rate}")
        rates = supported_rates(audio_format)
        if output_rate is not None and (output_rate <= 0 or (rates is not None and output_rate not in rates)):
            allowed = ", ".join(map(str, rates)) if rates else "any positive rate"
            raise ValueError(f"{audio_format} cannot be encoded at {output_rate} Hz; it takes {allowed}")

        self.audio_format = audio_format
        self.input_rate = input_rate
        self.output_rate: int = output_rate or choose_output_rate(audio_format, input_rate)
        self.media_type: str = MEDIA_TYPES[audio_format]
        self._samples_in = 0  # the next input frame's pts, in 1/input_rate
        self._done = False
        self._wav_header_due = audio_format == "wav"

        spec = CODEC_SPECS.get(audio_format)
        self._resampler: av.AudioResampler | None
        self._muxer: _Muxer | None
        if spec is None:
            # wav and pcm: resampled (if at all) in float32, then converted as chat2audio.audio does.
            self._muxer = None
            self._resampler = (
                None if self.output_rate == input_rate
                else av.AudioResampler(format="flt", layout="mono", rate=self.output_rate)
            )
        else:
            self._resampler = av.AudioResampler(format=spec.sample_format, layout=spec.layout, rate=self.output_rate)
            self._muxer = _Muxer(spec, self.output_rate)

    def encode(self, samples: np.ndarray) -> bytes:
        """Bytes ready to send now; b"" while a codec frame is still filling."""
        self._check_open()
        audio = clean_audio(samples)
        data = self._take_wav_header()
        if audio.size:
            data += self._convert(audio)
        return data

    def finish(self) -> bytes:
        """Flush the resampler, the codec and the container; the stream is complete after this."""
        self._check_open()
        data = self._take_wav_header() + self._convert(None)
        if self._muxer is not None:
            data += self._muxer.finish()
        self._release()
        return data

    def close(self) -> None:
        """Release without finishing (the client hung up); safe to call again or after finish()."""
        if self._muxer is not None:
            self._muxer.close()
        self._release()

    def _convert(self, audio: np.ndarray | None) -> bytes:
        """Resample and encode clean audio (None flushes the resampler); returns the bytes produced."""
        if self._resampler is None:  # wav or pcm at the input rate
            return b"" if audio is None else to_pcm16(audio)
        frames = self._resampler.resample(None if audio is None else self._input_frame(audio))
        if self._muxer is None:
            return b"".join(to_pcm16(frame.to_ndarray()) for frame in frames)
        return self._muxer.encode(frames)

    def _input_frame(self, audio: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.input_rate
        frame.time_base = Fraction(1, self.input_rate)
        frame.pts = self._samples_in  # the encoders and the Ogg granule positions need timestamps
        self._samples_in += audio.size
        return frame

    def _take_wav_header(self) -> bytes:
        if not self._wav_header_due:
            return b""
        self._wav_header_due = False
        return streaming_wav_header(self.output_rate)

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError(f"this {self.audio_format} stream is already finished or closed")

    def _release(self) -> None:
        self._done = True
        self._muxer = self._resampler = None
