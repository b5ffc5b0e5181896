"""When a streamed sentence's chunks are vocoded: as late as the listener's buffer allows.

A vocoder call costs a fixed part (SoVITS' encoders re-read the sentence so far, and the chunk's
overlap is decoded again: ~70 ms on a real-size voice on 2 cores) and a part per token (~4 ms),
while the GPT costs ~13 ms per token and a token plays 40 ms. So long chunks waste less, but each
must be ready before the listener has played what came before. A fixed schedule fits one machine's
speed only: on a slower one, or beside a second stream or an LLM, it runs dry. The pacer measures
the speeds as it goes (`Pace`) and follows each streamed sentence's listener (`Playback`):
- while the listener waits (for its first audio, or after running dry), a chunk is as small as it
  can be (time to first audio), yet long enough that, at the measured speed, the next chunk can be
  ready before it has played;
- otherwise a chunk is vocoded when it reaches its size in `ChunkSchedule` (chunks grow, so the
  listener's buffer grows), or earlier, once waiting for one more token would make it late; never
  shorter than the fewest tokens worth a vocoder call (else the buffer shrinks with every call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OVERLAP_TOKENS = 5  # streamed chunks overlap by this many tokens, cross-faded (gsv_tts' default)
TOKEN_AUDIO_S = 0.04  # a semantic token plays 40 ms at speed 1 (25 per second)
MARGIN_S = 0.1  # a chunk is planned to be ready this long before the listener needs it
SMALLEST_CHUNK = 4  # tokens: a smaller chunk costs the vocoder more than it plays
LARGEST_FIRST_CHUNK = 50  # tokens (2 s of speech): time to first audio stays bounded
VOCODER_FIXED_TOKENS = 20  # a vocoder call's fixed cost (encoders, overlap), in its cost per token
# Weight of each new measurement in the running averages: a token's wait is measured at every step
# and includes the other rows' vocoding (a final chunk can take 0.3 s), so it is averaged over ~50.
TOKEN_SMOOTHING = 0.02
SMOOTHING = 0.3  # a vocoder call's cost and a prefill, measured a few times a sentence


@dataclass(frozen=True)
class ChunkSchedule:
    """The sizes a streamed sentence's chunks grow through when the machine keeps up: the first
    (at least `first` tokens), then `ramp`, then `size` growing by `growth` up to `largest`.

    The first chunk plays only `first - OVERLAP_TOKENS` tokens (each chunk holds back its last
    tokens for the cross-fade into the next); the ramp keeps each chunk short enough to be ready
    while the one before plays; the growth thins out vocoder calls as the buffer fills."""

    first: int = 12
    ramp: tuple[int, ...] = (10, 14, 20)
    size: int = 25
    growth: float = 1.25
    largest: int = 100

    def chunk_size(self, chunk: int) -> int:
        """The size of chunk number `chunk` (0, 1, ...), in tokens."""
        sizes = (self.first, *self.ramp)
        if chunk < len(sizes):
            return sizes[chunk]
        size = self.size
        for _ in range(chunk - len(sizes)):
            size = min(self.largest, math.ceil(size * self.growth))
        return size

    def end(self, chunk: int) -> int:
        """Where chunk number `chunk` ends, in tokens, when every chunk has its scheduled size."""
        return sum(self.chunk_size(index) for index in range(chunk + 1))


@dataclass
class Pace:
    """The engine's measured speeds, in seconds: running averages (the plain mean of the first few
    measurements). Zero until measured, which makes the pacer keep to the schedule."""

    token_s: float = 0.0  # a row's wait for its next GPT token, its own vocoding excluded
    vocoder_token_s: float = 0.0  # a vocoder call costs this × (its tokens + VOCODER_FIXED_TOKENS)
    prefill_s: float = 0.0  # a sentence joining the batch (text front-end, BERT, GPT prompt)
    measured: dict[str, int] = field(default_factory=dict)  # how many times each

    def observe_token(self, seconds: float) -> None:
        self._average("token_s", seconds, TOKEN_SMOOTHING)

    def observe_vocoder(self, seconds: float, tokens: int) -> None:
        self._average("vocoder_token_s", seconds / (tokens + VOCODER_FIXED_TOKENS), SMOOTHING)

    def observe_prefill(self, seconds: float) -> None:
        self._average("prefill_s", seconds, SMOOTHING)

    def _average(self, name: str, value: float, smoothing: float) -> None:
        count = self.measured[name] = self.measured.get(name, 0) + 1
        current = getattr(self, name)
        setattr(self, name, current + max(smoothing, 1 / count) * (value - current))

    def vocoder_s(self, tokens: int) -> float:
        return self.vocoder_token_s * (tokens + VOCODER_FIXED_TOKENS)


@dataclass
class Playback:
    """One streamed sentence as its listener hears it: each chunk plays on arrival, once what came
    before has played; the first once the reply's earlier audio has (at `deadline`)."""

    deadline: float
    token_audio_s: float = TOKEN_AUDIO_S
    chunks: int = 0  # vocoded so far
    end: int = 0  # tokens vocoded so far
    dry_at: float | None = None  # when the listener will have played everything sent

    def vocoded(self, end: int) -> None:
        self.chunks, self.end = self.chunks + 1, end

    def sent(self, now: float, seconds: float) -> None:
        """`seconds` of audio sent `now`; a listener that ran dry resumes with it."""
        self.dry_at = max(self.runs_dry_at(), now) + seconds

    def runs_dry_at(self) -> float:
        return self.deadline if self.dry_at is None else self.dry_at


class ChunkPacer:
    """Decides, after each GPT step, whether a streamed sentence's next chunk is vocoded now.
    Not `adaptive`: always at the schedule's sizes, so the same request gives the same samples."""

    def __init__(self, schedule: ChunkSchedule, *, adaptive: bool = True) -> None:
        self.schedule, self.adaptive, self.pace = schedule, adaptive, Pace()

    def chunk_end(self, playback: Playback, tokens: int, now: float, *, waiting: int = 0) -> int | None:
        """Where the chunk to vocode now ends (`tokens`, all the sentence has), or None to wait for
        more. `waiting`: sentences about to join the batch, whose prefill delays every row."""
        pending, pace = tokens - playback.end, self.pace
        if not self.adaptive:
            return tokens if pending >= self.schedule.chunk_size(playback.chunks) else None
        first = playback.chunks == 0
        held_back = OVERLAP_TOKENS if first else 0  # the first chunk plays all but its overlap
        smallest = self.smallest_chunk(playback.token_audio_s)
        if playback.runs_dry_at() <= now and smallest < math.inf:  # the listener waits: its first audio, or after running dry
            return tokens if pending >= held_back + self.restart_size(playback, now) else None
        if pending >= (self.first_chunk(playback, now) if first else self.chunk_size(playback.chunks, smallest)):
            return tokens
        if pending < held_back + smallest:
            return None
        ready_if_we_wait = now + pace.token_s + pace.vocoder_s(pending + 1 + OVERLAP_TOKENS) + waiting * pace.prefill_s
        return tokens if ready_if_we_wait + MARGIN_S >= playback.runs_dry_at() else None

    def chunk_size(self, chunk: int, smallest: float) -> int:
        """The schedule's size for a chunk, or twice the smallest worth vocoding if that is more (on
        a slow machine, the schedule's ramp would only just pay for itself)."""
        size = self.schedule.chunk_size(chunk)
        return size if smallest == math.inf else min(self.schedule.largest, max(size, math.ceil(2 * smallest)))

    def smallest_chunk(self, token_audio_s: float) -> float:
        """The fewest tokens worth a vocoder call of their own: fewer play for less time than they
        cost (its fixed cost included), so the listener's buffer shrinks. Infinite when the voice
        is slower than speech: then only long chunks (the least waste) shorten the wait."""
        gain_per_token = token_audio_s - self.pace.token_s - self.pace.vocoder_token_s
        if gain_per_token <= 0:
            return math.inf
        return max(SMALLEST_CHUNK, self.pace.vocoder_s(OVERLAP_TOKENS) / gain_per_token)

    def first_chunk(self, playback: Playback, now: float) -> int:
        """The first chunk's size: the schedule's, or longer when the measured speed needs it."""
        return OVERLAP_TOKENS + self.restart_size(playback, now)

    def restart_size(self, playback: Playback, now: float) -> int:
        """How many tokens a chunk must play so that, at the measured speed, the next chunk can be
        ready before they have played: one long enough to gain on the listener (twice the
        smallest worth vocoding). At least the schedule's first chunk plays."""
        pace, audio_s = self.pace, playback.token_audio_s
        least = self.schedule.first - OVERLAP_TOKENS
        smallest = self.smallest_chunk(audio_s)
        if smallest == math.inf:  # slower than speech: no chunking keeps up, and a late start only moves the wait
            return least
        second = self.chunk_size(1, smallest)
        needed_s = MARGIN_S + second * pace.token_s + pace.vocoder_s(second + OVERLAP_TOKENS)
        needed_s -= max(0.0, playback.runs_dry_at() - now)  # what the listener still has to play
        return min(LARGEST_FIRST_CHUNK - OVERLAP_TOKENS, max(least, math.ceil(needed_s / audio_s)))
