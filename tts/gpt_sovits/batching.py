"""Batched GPT-SoVITS synthesis: the sentences of concurrent replies share the GPT's decode steps.

The GPT (phonemes → semantic tokens) is autoregressive: one forward pass per 40 ms of speech, each
so small that eight rows cost little more than one. So the engine's worker thread runs every
sentence that uses the same GPT weights together: a sentence joins at the next step (its prompt
read alone, into its own slot of a shared KV cache) and leaves at its end, at its token budget or
at the step after its listener hung up. Each row keeps its own reference, SoVITS model and sampling
settings; only the GPT's matrix products are shared, so voices never mix, and with deterministic
sampling a sentence comes out as it does alone.

The SoVITS vocoder is not autoregressive and runs per sentence between steps, most urgent first: a
streamed sentence's chunks when its `ChunkPacer` says (as late as its listener allows), or a whole
sentence when its GPT pass ends.

Sentences wait in deadline order (`speaking_by`): the most urgent joins first. A batch holds one
GPT's sentences (each character usually has its own fine-tuned GPT); when several GPTs have
sentences running, the worker steps their batches in turn, so a newcomer in another voice starts
at once instead of waiting for the others to finish.

gsv_tts' own `infer` / `infer_stream` run one sentence at a time, and `infer_batched` a fixed list
to completion with one set of sampling settings and no repetition penalty; what is used here are
its models' layers (`process_prompt`, `decode_next_token`, `vq_model.decode`) and its sampler; on a CPU the
decode step is `decode_step`'s, which computes the same numbers in fewer operations.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from chat2audio.runtime.audio import clean_audio
from chat2audio.runtime.cores import CoreShare
from chat2audio.runtime.threads import END
from tts.base import TTSError, WordTimings
from tts.gpt_sovits.cache import PreparedVoice, VoiceCache
from tts.gpt_sovits.decode_step import decode_next_token as decode_on_cpu
from tts.gpt_sovits.guard import GenerationGuard
from tts.gpt_sovits.pacing import OVERLAP_TOKENS, TOKEN_AUDIO_S, ChunkPacer, Playback
from tts.gpt_sovits.precision import kv_cache_dtype
from tts.gpt_sovits.stats import EngineStats
from tts.gpt_sovits.voice import GPTSoVITSVoice
from tts.gpt_sovits.word_timing import SentenceWords, monotonic_alignment

log = logging.getLogger(__name__)

FAILED = "GPT-SoVITS synthesis failed; see the server log"  # what clients hear of an unexpected error
SUPPRESS_EOS_STEPS = 10  # gsv_tts' GPT may not end a sentence in its first 10 tokens
PAUSE_AFTER_S = 0.2  # silence after each sentence, longer after a full stop (as gsv_tts does)
PAUSE_SCALE = {"…": 2.0, ".": 1.5, "。": 1.5, "?": 1.5, "？": 1.5, "!": 1.5, "！": 1.5}
ATTENTION_STEP = 64  # attention reads the KV cache up to the longest row, rounded up to this


@dataclass(eq=False)
class Sentence:
    """One sentence to speak, from its request to its last chunk. `send` hands items (audio, an
    error, END) to the requester from the worker thread; `finished` resolves when it has left."""

    text: str
    voice: GPTSoVITSVoice
    streaming: bool
    deadline: float
    send: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: Future = field(default_factory=Future)
    holds: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # its voice, kept from eviction
    # Set when it joins the batch:
    prepared: PreparedVoice | None = None
    phones: Any = None  # the sentence's phoneme ids, for the vocoder
    text_phones: int = 0  # the GPT's text prompt length (reference + sentence)
    limit: int = 0
    history: Any = None  # the reference's semantic tokens + this sentence's: the repetition penalty's view
    tokens: list[int] = field(default_factory=list)
    next_input: Any = None
    stream: _StreamState | None = None
    words: SentenceWords | None = None  # its words, when the engine times them


@dataclass
class _StreamState:
    """Where a streamed sentence's vocoding stands between chunks."""

    playback: Playback  # what its listener has heard, and when
    valid_start: int = 0
    y_overlap: Any = None  # the SoVITS encoder's overlap (gsv_tts keeps it on the model: one per sentence here)
    audio_overlap: Any = None  # the end of the last chunk; None until the first is vocoded
    text_encoding: Any = None  # its phonemes' SoVITS text encoding (`text_encoding.TextEncodedOnce`)
    speech_samples: int = 0  # samples sent so far


class _Batch:
    """The sentences decoding on one GPT, and their KV cache: row i is slot i. The cache grows by
    doubling and copies only on growth and when a row leaves (the last row moves into its slot)."""

    def __init__(self, t2s: Any, *, max_context: int, capacity: int) -> None:
        import torch

        self.t2s, self.max_context = t2s, max_context
        self.rows: list[Sentence] = []
        self.device, self.dtype = t2s.ar_predict_layer.weight.device, kv_cache_dtype(t2s)
        self.layers, self.heads = t2s.num_layers, t2s.num_head
        self.head_dim = t2s.model_dim // t2s.num_head
        self.positions = (t2s.ar_audio_position.alpha * t2s.ar_audio_position.pe).transpose(0, 1)  # [pos, 1, D]
        transformer = t2s.t2s_transformer
        on_cpu = self.device.type == "cpu"
        self.decode_next_token = functools.partial(decode_on_cpu, transformer) if on_cpu else transformer.decode_next_token
        self.capacity = 0
        self.k = self.v = self.mask = None
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        import torch

        shape = (self.layers, capacity, self.heads, self.max_context, self.head_dim)
        # Zeros, not empty: attention masks the unused positions, but a masked NaN or inf left in
        # reused memory still poisons the row (0 × inf is NaN).
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        mask = torch.zeros((capacity, 1, 1, self.max_context), dtype=torch.bool, device=self.device)
        lengths = torch.zeros(capacity, dtype=torch.long, device=self.device)
        if self.capacity:
            k[:, : self.capacity], v[:, : self.capacity] = self.k, self.v
            mask[: self.capacity], lengths[: self.capacity] = self.mask, self.lengths
        self.k, self.v, self.mask, self.lengths, self.capacity = k, v, mask, lengths, capacity
        self.slot_index = torch.arange(capacity, device=self.device)

    def embed(self, tokens: Any, positions: Any) -> Any:
        """The GPT's input for the next step: each row's new token at its own position."""
        t2s = self.t2s
        return t2s.ar_audio_embedding(tokens) * t2s.ar_audio_position.x_scale + self.positions[positions]

    def drop_finished(self) -> None:
        """Rows that ended or whose listener hung up leave; their slots are free at once."""
        for index in reversed(range(len(self.rows))):
            if self.rows[index].finished.done():
                last = len(self.rows) - 1
                if index != last:  # a later row (kept: those were seen first) fills the gap
                    self._move(last, index)
                    self.rows[index] = self.rows[last]
                self.rows.pop()

    def _move(self, source: int, target: int) -> None:
        filled = int(self.lengths[source])
        self.k[:, target, :, :filled] = self.k[:, source, :, :filled]
        self.v[:, target, :, :filled] = self.v[:, source, :, :filled]
        self.mask[target], self.lengths[target] = self.mask[source], self.lengths[source]


class SentenceBatcher:
    """Runs every sentence on the engine's worker, up to `max_batch` decoding together."""

    def __init__(
        self,
        *,
        worker: Executor,
        cache: VoiceCache,
        guard: GenerationGuard,
        stats: EngineStats,
        max_batch: int,
        max_context: int,
        pacer: ChunkPacer,
        cores: CoreShare,
        word_timings: bool = False,
    ) -> None:
        """`word_timings`: each sentence's audio comes with `WordTimings` (see `_vocode`)."""
        self.worker, self.cache, self.guard, self.stats, self.cores = worker, cache, guard, stats, cores
        self.word_timings = word_timings
        self.max_batch, self.max_context, self.pacer = max_batch, max_context, pacer
        self.batches: dict[str, _Batch] = {}  # by GPT weights
        self._waiting: list[tuple[float, int, Sentence]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._driving = False

    @property
    def active(self) -> int:
        """Sentences synthesizing or waiting to (a hung-up one is not counted)."""
        with self._lock:
            waiting = [sentence for _, _, sentence in self._waiting]
        return sum(1 for sentence in [*self.rows, *waiting] if not sentence.cancelled.is_set())

    @property
    def rows(self) -> list[Sentence]:
        """Every sentence decoding now, on any GPT."""
        return [row for batch in list(self.batches.values()) for row in list(batch.rows)]

    # -- any thread ------------------------------------------------------------------------------

    def submit(self, sentence: Sentence) -> None:
        """Queue a sentence; the worker takes it up at its next step (or starts stepping)."""
        with self._lock:
            heapq.heappush(self._waiting, (sentence.deadline, next(self._order), sentence))
            if self._driving:
                return
            self._driving = True
        try:
            self.worker.submit(self._drive)
        except RuntimeError:  # the engine has stopped
            self.abandon(TTSError("GPT-SoVITS engine is stopped", status=503))

    def abandon(self, error: TTSError) -> None:
        """Answer every sentence still waiting with `error` (the worker is gone)."""
        with self._lock:
            waiting, self._waiting, self._driving = [s for _, _, s in self._waiting], [], False
        for sentence in waiting:
            self._finish(sentence, error, on_worker=False)

    def _finish(self, sentence: Sentence, error: TTSError | None = None, *, on_worker: bool = True) -> None:
        """Tell the requester the sentence is over (with `error` if it failed); once. On the worker,
        its voice is let go first, and the cache trimmed to its size."""
        if sentence.finished.done():
            return
        sentence.holds.close()
        if on_worker:
            self.cache.trim()
        if error is not None:
            sentence.send(error)
        sentence.send(END)
        sentence.finished.set_result(None)

    # -- the worker thread -----------------------------------------------------------------------

    def _drive(self) -> None:
        """Step until no sentence runs or waits. Should the loop itself fail, every sentence is told
        and the next one starts a new loop: nothing waits for a worker that has stopped stepping."""
        try:
            self._step_until_idle()
        except BaseException:
            log.exception("GPT-SoVITS batch loop failed")
            error = TTSError(FAILED)
            for batch in self.batches.values():
                for sentence in batch.rows:
                    self._finish(sentence, error, on_worker=False)
            self.batches = {}
            self.abandon(error)
            raise

    def _step_until_idle(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    if not self._waiting and not self.batches:
                        self._driving = False
                        return
                with self.cores.computing():
                    self._admit()
                stepping, stepped_at = self.rows, time.monotonic()
                vocoder_s: dict[Sentence, float] = {}  # each row's own vocoding in this pass
                for key, batch in list(self.batches.items()):
                    try:
                        with self.cores.computing():
                            vocoder_s |= self._step(batch)
                    except Exception:  # a failed step fails its sentences, never the worker
                        log.exception("GPT-SoVITS decode step failed")
                        for sentence in batch.rows:
                            self._finish(sentence, TTSError(FAILED))
                        batch.rows = []
                    if not batch.rows:
                        del self.batches[key]  # its KV cache goes with it
                self._observe_token_wait(stepping, time.monotonic() - stepped_at, vocoder_s)

    def _observe_token_wait(self, rows: list[Sentence], seconds: float, vocoder_s: dict[Sentence, float]) -> None:
        """Tell the pacer how long the rows waited for their token in this pass of the loop: the
        steps of every batch and the other rows' vocoding (a row's own is the vocoder's cost)."""
        if rows:
            waits = [seconds - vocoder_s.get(row, 0.0) for row in rows]
            self.pacer.pace.observe_token(sum(waits) / len(waits))

    def _admit(self) -> None:
        """Let waiting sentences join their GPT's batch, most urgent first, up to `max_batch` in all."""
        while len(self.rows) < self.max_batch:
            with self._lock:
                if not self._waiting:
                    return
                sentence = heapq.heappop(self._waiting)[2]
            if sentence.cancelled.is_set():
                self._finish(sentence)
                continue
            try:
                self._join(sentence)
            except TTSError as error:
                self._finish(sentence, error)
            except ValueError as error:  # gsv_tts' word for text it cannot phonemize
                log.warning("GPT-SoVITS could not synthesize %r: %s", sentence.text[:80], error)
                self._finish(sentence, TTSError("GPT-SoVITS could not turn this sentence into phonemes", status=422))
            except Exception:
                log.exception("GPT-SoVITS could not start a sentence")
                self._finish(sentence, TTSError(FAILED))

    def _join(self, sentence: Sentence) -> None:
        """Prepare the voice, read the sentence's prompt into a free slot, sample its first token."""
        import torch
        from gsv_tts.GPT_SoVITS.GPT.utils import sample
        from gsv_tts.TextProcessor import get_phones_and_bert

        tts, voice = self.cache.tts, sentence.voice
        sentence.holds.enter_context(self.cache.holding(voice))  # preparing another voice must not evict it
        prepared = sentence.prepared = self.cache.prepare(voice)
        began = time.monotonic()  # the prefill, past loading the voice
        reference = tts.prompt_audio_cache[prepared.key]
        text = sentence.text if tts._check_pause(sentence.text) else sentence.text + "."
        with self.stats.timing("text"):
            phones, word2ph, bert, norm_text = get_phones_and_bert(text, tts.tts_config, voice.target_language)
            if self.word_timings:
                sentence.words = SentenceWords.build(text, word2ph, norm_text, len(phones))
        device = tts.tts_config.device
        semantic_prompt = reference["prompt"]
        x = torch.LongTensor(reference["phones1"] + phones).to(device).unsqueeze(0)
        sentence.limit = self.guard.token_limit(
            phones=x.shape[1], ref_phones=len(reference["phones1"]), prompt_tokens=int(semantic_prompt.shape[-1])
        )
        sentence.phones = torch.LongTensor(phones).to(device).unsqueeze(0)
        sentence.text_phones = x.shape[1]
        if sentence.streaming:
            sentence.stream = _StreamState(Playback(sentence.deadline, TOKEN_AUDIO_S / voice.speed_factor))

        t2s = tts.gpt_models[prepared.gpt_key].t2s_model
        batch = self.batches.get(prepared.gpt_key)
        if batch is None:
            batch = self.batches[prepared.gpt_key] = _Batch(t2s, max_context=self.max_context, capacity=1)
        slot = len(batch.rows)
        if slot == batch.capacity:
            batch.grow(min(self.max_batch, 2 * batch.capacity))

        with self.stats.timing("gpt_prompt"):
            bert_features = torch.cat([reference["bert1"], bert]).unsqueeze(0)
            xy_pos, prompt_mask = t2s.process_single_data(x, semantic_prompt, bert_features)
            here = slice(slot, slot + 1)
            out = t2s.t2s_transformer.process_prompt(
                xy_pos, batch.k[:, here], batch.v[:, here], batch.lengths[here], prompt_mask
            )
        batch.mask[slot] = False
        batch.mask[slot, ..., : xy_pos.shape[1]] = True
        logits = t2s.ar_predict_layer(out[:, -1])
        logits[:, t2s.suppressed_tokens] = -float("inf")
        first = sample(logits[:, :-1], semantic_prompt, **_sampling(voice))[0]
        sentence.history = torch.cat([semantic_prompt, first], dim=1)
        sentence.tokens = [int(first)]
        sentence.next_input = batch.embed(first, batch.lengths[here] - sentence.text_phones)
        batch.rows.append(sentence)
        self.pacer.pace.observe_prefill(time.monotonic() - began)

    def _step(self, batch: _Batch) -> dict[Sentence, float]:
        """One GPT step for every row of a batch, then the vocoding it made ready, most urgent first;
        returns the seconds each row's vocoding took."""
        import torch
        from gsv_tts.GPT_SoVITS.GPT.utils import sample

        rows = batch.rows
        t2s, count = batch.t2s, len(rows)
        self.stats.largest_batch = max(self.stats.largest_batch, count)
        lengths, index = batch.lengths[:count], batch.slot_index[:count]
        batch.mask[index, 0, 0, lengths] = True  # each row also attends to the token it adds now
        span = min(self.max_context, -(-(int(lengths.max()) + 1) // ATTENTION_STEP) * ATTENTION_STEP)
        with self.stats.timing("gpt_step"):
            out = batch.decode_next_token(
                torch.cat([row.next_input for row in rows]),
                batch.k[:, :count, :, :span], batch.v[:, :count, :, :span], lengths, batch.mask[:count, :, :, :span], index,
            )  # advances `lengths` in place
            logits = t2s.ar_predict_layer(out[:, -1])

        vocoding: list[tuple[Sentence, int, int, bool]] = []  # (sentence, from token, to token, final)
        samples, now = [], time.monotonic()
        for row, row_logits in zip(rows, logits.split(1)):
            if row.cancelled.is_set():
                samples.append(row_logits.new_zeros((1, 1), dtype=torch.long))
                continue
            if len(row.tokens) < SUPPRESS_EOS_STEPS:
                row_logits[:, t2s.suppressed_tokens] = -float("inf")
            token = sample(row_logits, row.history, **_sampling(row.voice))[0]
            samples.append(token)
            if int(token) == t2s.EOS or len(row.tokens) >= row.limit:
                vocoding.append((row, row.stream.playback.end if row.stream else 0, len(row.tokens), True))
                continue
            row.tokens.append(int(token))
            row.history = torch.cat([row.history, token], dim=1)
            if row.stream is not None:
                end = self.pacer.chunk_end(row.stream.playback, len(row.tokens), now, waiting=len(self._waiting))
                if end is not None:
                    vocoding.append((row, row.stream.playback.end, end, False))
                    row.stream.playback.vocoded(end)
        inputs = batch.embed(torch.cat(samples), lengths - torch.tensor([row.text_phones for row in rows], device=lengths.device))
        for row, row_input in zip(rows, inputs.split(1)):
            row.next_input = row_input

        vocoder_s: dict[Sentence, float] = {}
        for row, start, tokens, final in sorted(vocoding, key=lambda job: job[0].deadline):
            if row.cancelled.is_set():
                continue
            spent = self.stats.stage_seconds["vocoder"]
            with self.stats.timing("vocoder"):
                audio, words = self._vocode(row, tokens, final)
            seconds = vocoder_s[row] = self.stats.stage_seconds["vocoder"] - spent
            if row.stream is not None:
                self.pacer.pace.observe_vocoder(seconds, tokens - start + (OVERLAP_TOKENS if start else 0))
            audio_s = audio.size / self.cache.tts.samplerate
            self.stats.vocoded_audio_s += audio_s
            if audio.size:
                row.send(audio)
                if row.stream is not None:
                    row.stream.playback.sent(time.monotonic(), audio_s)
            if words:
                row.send(WordTimings(words))
            if final:
                self.stats.completed += 1
                self.stats.tokens_last = len(row.tokens)
                self._finish(row)
        for row in batch.rows:
            if row.cancelled.is_set() and not row.finished.done():  # hung up mid-sentence
                self.stats.cancelled += 1
                self.stats.tokens_last = len(row.tokens)
                self._finish(row)
        batch.drop_finished()
        return vocoder_s

    def _vocode(self, sentence: Sentence, tokens: int, final: bool) -> tuple[Any, tuple]:
        """Audio for the sentence's first `tokens` tokens: the new part of a streamed sentence, or
        the whole sentence; with the words heard in it when the sentence's words are timed.

        A streamed chunk's words are those whose next phoneme begins inside the audio sent so far
        (the vocoder's attention covers the sentence from its start at every chunk), the rest with
        the final chunk; times count from the first sample sent, past the trimmed head. A chunk's
        cross-fade alignment (`_sola_algorithm`, at most 10 ms) is not accounted for."""
        import torch

        from tts.gpt_sovits.text_encoding import encoding_text_once, restore_text_encoder

        tts, voice, prepared = self.cache.tts, sentence.voice, sentence.prepared
        vq_model = tts.sovits_models[prepared.sovits_key].vq_model
        timbre = tts.spk_audio_cache[prepared.key]["ge"][prepared.sovits_key]
        codes = torch.tensor(sentence.tokens[:tokens], device=sentence.phones.device).view(1, 1, -1)
        state = sentence.stream
        if state is None:
            audio, attention = vq_model.decode(
                codes, sentence.phones, timbre, noise_scale=voice.noise_scale, speed=voice.speed_factor
            )
            audio = audio[0, 0]
            head = tts._find_head_threshold_offsets(audio)
            audio = audio[head:]
            heard_frames, speech_samples = attention.shape[1], audio.shape[0]
        else:
            overlap_samples = OVERLAP_TOKENS * vq_model.samples_per_frame
            first_chunk = state.audio_overlap is None
            vq_model.enc_p.y_overlap = state.y_overlap
            state.text_encoding = encoding_text_once(vq_model, state.text_encoding)
            try:
                audio, attention = vq_model.decode(
                    codes, sentence.phones, timbre, noise_scale=voice.noise_scale, speed=voice.speed_factor,
                    stream_mode=True, valid_start_idx=state.valid_start, overlap_len=OVERLAP_TOKENS,
                )
                state.y_overlap = vq_model.enc_p.y_overlap
            finally:
                vq_model.enc_p.y_overlap = None
                restore_text_encoder(vq_model)
            if not first_chunk:
                audio, _ = tts._sola_algorithm(state.audio_overlap, audio, overlap_samples)
            state.audio_overlap = audio[:, :, -overlap_samples:].clone()
            if not final:
                audio = audio[:, :, :-overlap_samples]
                state.valid_start = attention.shape[1] - OVERLAP_TOKENS
            heard_frames = attention.shape[1] if final else state.valid_start
            audio = audio[0, 0]
            head = tts._find_head_threshold_offsets(audio) if first_chunk else 0
            audio = audio[head:]
            state.speech_samples += audio.shape[0]
            speech_samples = state.speech_samples
        words: tuple = ()
        if sentence.words is not None and speech_samples:
            with self.stats.timing("words"):
                timed, sample_s = sentence.words, 1.0 / tts.samplerate
                if head:
                    timed.head_s = head * sample_s
                words = timed.heard(
                    monotonic_alignment(attention.float().cpu()),
                    frame_s=vq_model.samples_per_frame * sample_s / voice.speed_factor,
                    heard_frames=heard_frames, final=final, audio_s=speech_samples * sample_s,
                )
        samples = audio.float().cpu().numpy()
        if final:
            pause = PAUSE_AFTER_S * PAUSE_SCALE.get(sentence.text.rstrip()[-1:], 1.0) / voice.speed_factor
            samples = _with_silence(samples, round(pause * tts.samplerate))
        return clean_audio(samples), words


def _with_silence(samples: Any, count: int) -> Any:
    import numpy as np

    return np.concatenate([samples, np.zeros(count, dtype=samples.dtype)])


def _sampling(voice: GPTSoVITSVoice) -> dict[str, Any]:
    return {
        "top_k": voice.top_k, "top_p": voice.top_p, "temperature": voice.temperature,
        "repetition_penalty": voice.repetition_penalty,
    }


