"""`tts.gpt_sovits.pacing`: a streamed reply keeps ahead of its listener on a slower machine too.

The batcher's loop is replayed on a simulated clock: each GPT step, vocoder call and prefill costs
what a machine's speeds say, the pacer is told the measured costs as the batcher tells it, and a
listener plays each chunk as it arrives (`bench.concurrency.Listener`, the benchmark's). The
machine's speeds are the real-size voice's on this project's 2-core machines (`python -m bench
--profiles full-voice`, and the split of a vocoder call measured in `bench/RESULTS.md`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.concurrency import Listener
from tts.gpt_sovits.pacing import OVERLAP_TOKENS, TOKEN_AUDIO_S, ChunkPacer, ChunkSchedule, Playback


@dataclass(frozen=True)
class Machine:
    token_s: float = 0.011  # a GPT step
    vocoder_fixed_s: float = 0.07  # a vocoder call: SoVITS' encoders over the sentence so far
    vocoder_token_s: float = 0.004  # ... and per token it decodes (its overlap included)
    prefill_s: float = 0.25  # a sentence joining: text front-end, BERT, GPT prompt

    def slower(self, factor: float) -> Machine:
        return Machine(*(factor * value for value in (self.token_s, self.vocoder_fixed_s, self.vocoder_token_s, self.prefill_s)))


REAL_SIZE_VOICE = Machine()
REPLY_TOKENS = (90, 140, 60)  # three sentences (3.6 s, 5.6 s, 2.4 s of speech)
WARM_UP_TOKENS = (20,)  # the service speaks a short sentence when it loads a voice


def warmed_pacer(machine: Machine) -> ChunkPacer:
    """A pacer that has measured `machine` on the warm-up sentence, as the service's has."""
    pacer = ChunkPacer(ChunkSchedule())
    play_reply(pacer, machine, WARM_UP_TOKENS)
    return pacer


@dataclass
class Played:
    listener: Listener
    chunk_sizes: list[list[int]]  # per sentence


def play_reply(
    pacer: ChunkPacer, machine: Machine, sentences: tuple[int, ...] = REPLY_TOKENS, *, stalls: dict[tuple[int, int], float] | None = None
) -> Played:
    """Stream a reply of sentences of these many GPT tokens through `pacer` on `machine`, one
    sentence after the other as the pipeline does, each due when the reply's audio so far runs out.
    `stalls`: (sentence, token) → seconds the machine stops before that token (another process)."""
    pace = pacer.pace
    listener, now, reply_started, reply_s, sizes = Listener(), 0.0, None, 0.0, []
    for index, length in enumerate(sentences):
        playback = Playback(deadline=now if reply_started is None else reply_started + reply_s)
        now += machine.prefill_s  # its first token comes with the prompt
        pace.observe_prefill(machine.prefill_s)
        sizes.append([])
        for tokens in range(1, length + 1):
            now += (stalls or {}).get((index, tokens), 0.0)
            if tokens > 1:
                now += machine.token_s
                pace.observe_token(machine.token_s)
            final = tokens == length
            end = tokens if final else pacer.chunk_end(playback, tokens, now)
            if end is None:
                continue
            start = playback.end
            decoded = end - start + (OVERLAP_TOKENS if start else 0)
            cost = machine.vocoder_fixed_s + machine.vocoder_token_s * decoded
            now += cost
            pace.observe_vocoder(cost, decoded)
            # Each chunk holds back its last OVERLAP_TOKENS for the cross-fade, but the last.
            plays = end - start - (0 if start else OVERLAP_TOKENS) + (OVERLAP_TOKENS if final else 0)
            audio_s = plays * TOKEN_AUDIO_S
            playback.vocoded(end)
            playback.sent(now, audio_s)
            listener.heard(now, audio_s)
            reply_started = now if reply_started is None else reply_started
            reply_s += audio_s
            sizes[-1].append(end - start)
    assert listener.audio_s == pytest.approx(sum(sentences) * TOKEN_AUDIO_S)
    return Played(listener, sizes)


@pytest.mark.parametrize("slowdown", [1.0, 1.25, 1.5, 1.8])
def test_a_reply_never_runs_dry_on_this_machine_or_one_much_slower(slowdown):
    """From 1.5× (about the CI machine whose full-size voice test ran dry: first audio 0.79 s
    against 0.55 s here) the fixed schedule runs dry; the pacer does not, up to 1.8× (where the
    reply costs ~0.97 of its length with the schedule's chunks)."""
    machine = REAL_SIZE_VOICE.slower(slowdown)
    played = play_reply(warmed_pacer(machine), machine)
    assert played.listener.underruns == 0, played
    if slowdown >= 1.5:
        assert play_reply(ChunkPacer(ChunkSchedule(), adaptive=False), machine).listener.underruns > 0


def test_after_the_machine_stalls_the_stream_resumes_with_chunks_worth_their_cost():
    """A 3 s stall mid-sentence leaves the listener waiting: the next chunk is sized like a
    first one (long enough for the one after to be in time), not cut short at every step."""
    machine = REAL_SIZE_VOICE
    played = play_reply(warmed_pacer(machine), machine, stalls={(1, 40): 3.0})
    assert played.listener.underruns == 1 and played.listener.stall_s < 3.0
    after_stall = played.chunk_sizes[1][2:-1]
    assert after_stall and min(after_stall) >= ChunkSchedule().first - OVERLAP_TOKENS, played.chunk_sizes


def test_the_first_chunk_is_small_when_the_machine_is_fast_and_grows_only_as_much_as_a_slow_one_needs():
    fast = play_reply(warmed_pacer(REAL_SIZE_VOICE), REAL_SIZE_VOICE)
    slow_machine = REAL_SIZE_VOICE.slower(1.5)
    slow = play_reply(warmed_pacer(slow_machine), slow_machine)
    assert fast.chunk_sizes[0][0] <= ChunkSchedule().first + 3
    assert fast.chunk_sizes[0][0] < slow.chunk_sizes[0][0] <= 30
    assert fast.listener.ttfa_s < 0.25 + 16 * 0.011 + 0.2


def test_chunks_grow_so_a_sentence_takes_few_vocoder_calls():
    played = play_reply(warmed_pacer(REAL_SIZE_VOICE), REAL_SIZE_VOICE)
    long_sentence = played.chunk_sizes[1]
    assert len(long_sentence) <= 7, long_sentence
    assert max(long_sentence) > 2 * long_sentence[0]


def test_a_voice_slower_than_speech_gets_long_chunks_not_a_stutter():
    """Nothing keeps up then; a chunk vocoded early would cost more than it plays, so the pacer
    does not cut chunks short, and the waits are few: no more vocoder calls than the schedule's."""
    machine = REAL_SIZE_VOICE.slower(3.0)
    paced = play_reply(warmed_pacer(machine), machine)
    scheduled = play_reply(ChunkPacer(ChunkSchedule(), adaptive=False), machine)
    assert sum(map(len, paced.chunk_sizes)) <= sum(map(len, scheduled.chunk_sizes))
    assert paced.listener.underruns <= scheduled.listener.underruns


def test_a_sentence_whose_listener_has_audio_left_starts_with_the_schedule_s_first_chunk():
    pacer = ChunkPacer(ChunkSchedule())
    due_in_two_seconds = Playback(deadline=100.0 + 2.0)
    assert pacer.first_chunk(due_in_two_seconds, now=100.0) == ChunkSchedule().first
    assert pacer.chunk_end(due_in_two_seconds, ChunkSchedule().first, now=100.0) == ChunkSchedule().first


def test_the_schedule_grows_from_its_ramp_to_its_largest_size():
    schedule = ChunkSchedule()
    sizes = [schedule.chunk_size(chunk) for chunk in range(40)]
    assert sizes[: 1 + len(schedule.ramp)] == [schedule.first, *schedule.ramp]
    grown = sizes[1 + len(schedule.ramp):]
    assert grown == sorted(grown) and grown[0] == schedule.size and grown[-1] == schedule.largest
    assert schedule.end(3) == sum(sizes[:4])


def test_the_pace_follows_the_machine():
    slow = REAL_SIZE_VOICE.slower(2.0)
    pacer = warmed_pacer(slow)
    play_reply(pacer, slow)
    assert pacer.pace.token_s == pytest.approx(slow.token_s, rel=0.05)  # many steps measured
    assert pacer.pace.vocoder_s(30) == pytest.approx(slow.vocoder_fixed_s + 30 * slow.vocoder_token_s, rel=0.35)
    assert pacer.pace.prefill_s == pytest.approx(slow.prefill_s, rel=0.15)  # four prefills measured

