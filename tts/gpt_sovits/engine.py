"""The GPT-SoVITS engine: start, stop and synthesize, every gsv_tts call on its own worker thread.

gsv_tts keeps mutable state on its `TTS` object and on the models (KV caches, CUDA graphs, the
SoVITS stream overlap), so every call into it runs on that one thread; concurrent sentences share
it by decoding together (`batching`). torch and gsv_tts are imported by `start()`, on that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

from chat2audio.runtime.cores import CoreShare
from chat2audio.runtime.devices import DeviceUnavailable, resolve_device
from chat2audio.runtime.scheduling import DeadlineExecutor, current_deadline
from chat2audio.runtime.text import is_speakable
from chat2audio.runtime.threads import Handover
from tts.base import SpeechItem, TTSError, VoiceParams
from tts.gpt_sovits.base_models import base_model_problems
from tts.gpt_sovits.batching import Sentence, SentenceBatcher
from tts.gpt_sovits.cache import VoiceCache
from tts.gpt_sovits.guard import GenerationGuard
from tts.gpt_sovits.pacing import ChunkPacer, ChunkSchedule
from tts.gpt_sovits.precision import PrecisionPlan, PrecisionUnavailable, convert_bert, plan_precision
from tts.gpt_sovits.process import prepare_process_for_gsv_tts
from tts.gpt_sovits.stats import EngineStats
from tts.gpt_sovits.voice import GPTSoVITSVoice, voice_file_problems

log = logging.getLogger(__name__)

SAMPLE_RATE = 32000  # every v2 / v2Pro / v2ProPlus SoVITS decoder outputs 32 kHz
MAX_SENTENCE_CHARS = 500  # the BERT reads 510 characters at most; the GPT context usually ends sooner


class GPTSoVITSEngine:
    """Synthesizes GPT-SoVITS voices on one worker thread, up to `max_batch` sentences decoding
    together, with an LRU of prepared voices.

    `cache_size` bounds the idle voices; a voice held by a running reply (`reply_voice`) is never
    evicted, so replies in more voices than the cache holds do not reload weights per sentence.
    """

    name: ClassVar[str] = "gpt-sovits"
    voice_model: ClassVar[type[VoiceParams]] = GPTSoVITSVoice

    def __init__(
        self,
        *,
        models_dir: Path,
        device: str = "auto",
        cache_size: int = 2,
        use_bert: bool = True,
        min_tokens: int = 25,
        tokens_per_phone: float = 6.0,
        max_context: int = 1024,
        first_chunk_tokens: int = 12,
        stream_chunk_tokens: int = 25,
        adaptive_chunks: bool = True,
        max_batch: int = 8,
        precision: str = "auto",
        cores: CoreShare | None = None,
        word_timings: bool = True,
    ) -> None:
        """`min_tokens + tokens_per_phone × phonemes` bounds each sentence's GPT tokens (25 = 1 s of
        speech; real speech is ~3 per phoneme), and `max_context` the prompt plus generation.
        `adaptive_chunks`: a streamed sentence's chunks are paced by its listener's buffer
        (`pacing.py`); without, they always end at the same tokens (reproducible samples).
        `cores` is shared with the other in-process torch engines (the LLM), so that computing at
        the same time they split the cores instead of oversubscribing them.
        `word_timings`: each sentence's audio comes with `WordTimings` (when each character is
        heard). Costs on a full-size voice on 2 cores: 1–3 ms a whole sentence, 2–12 ms a streamed
        one (every chunk re-aligns the sentence so far), against 0.3–1.6 s of vocoding."""
        self.models_dir = Path(models_dir)
        self.device_setting = device
        self.use_bert = use_bert
        self.precision_setting = precision
        self.precision: PrecisionPlan | None = None  # what `precision` means on the device, once started
        self.chunks = ChunkSchedule(first=first_chunk_tokens, size=stream_chunk_tokens)  # how sentences stream
        self.stats = EngineStats()
        self.device: str | None = None
        self.cache = VoiceCache(models_dir=self.models_dir, cache_size=cache_size, stats=self.stats)
        self._worker = DeadlineExecutor("gpt-sovits")  # the one thread that touches the models
        self._batcher = SentenceBatcher(
            worker=self._worker,
            cache=self.cache,
            guard=GenerationGuard(min_tokens=min_tokens, tokens_per_phone=tokens_per_phone, max_context=max_context),
            stats=self.stats,
            max_batch=max_batch,
            max_context=max_context,
            pacer=ChunkPacer(self.chunks, adaptive=adaptive_chunks),
            cores=cores or CoreShare(),
            word_timings=word_timings,
        )
        self._tts: Any = None

    @property
    def cache_size(self) -> int:
        return self.cache.cache_size

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        problems = base_model_problems(self.models_dir, ("zh",), use_bert=self.use_bert)
        if problems:
            log.debug("GPT-SoVITS models dir %s is incomplete: %s", self.models_dir, "; ".join(problems))
            raise TTSError(f"GPT-SoVITS base models missing: {'; '.join(problems)}", status=503, not_downloaded=True)
        await self._run(self._load_runtime)

    async def stop(self) -> None:
        if self._tts is not None:
            await self._run(self._release)
        # A synthesis in progress finishes on its thread; the event loop does not wait for it.
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)
        self._batcher.abandon(TTSError("GPT-SoVITS engine is stopped", status=503))

    def sample_rate(self, voice: VoiceParams) -> int:
        return SAMPLE_RATE

    def check_voice(self, voice: VoiceParams, models_dir: Path) -> list[str]:
        assert isinstance(voice, GPTSoVITSVoice)
        models_dir = Path(models_dir)
        problems = voice_file_problems(voice, models_dir)
        failure = self.cache.remembered_failure(voice, models_dir)  # it failed to load at request time
        if failure:
            problems.append(failure)
        languages = (voice.ref_language, voice.target_language)
        return problems + base_model_problems(models_dir, languages, use_bert=self.use_bert)

    @contextlib.asynccontextmanager
    async def reply_voice(self, voice: VoiceParams) -> AsyncIterator[None]:
        """Hold `voice` loaded for one reply: it is prepared by its first sentence and not evicted
        before the reply ends, however many other voices speak in between."""
        assert isinstance(voice, GPTSoVITSVoice)
        try:
            with self.cache.holding(voice):
                yield
        finally:
            self._trim_later()

    async def synthesize(self, text: str, voice: VoiceParams, *, streaming: bool = False) -> AsyncIterator[SpeechItem]:
        assert isinstance(voice, GPTSoVITSVoice)
        if self._tts is None:
            raise TTSError("GPT-SoVITS engine is not started", status=503)
        if not is_speakable(text):
            return
        if len(text) > MAX_SENTENCE_CHARS:
            raise TTSError(
                f"sentence too long for GPT-SoVITS ({len(text)} characters; at most {MAX_SENTENCE_CHARS})", status=422
            )

        received = Handover()
        sentence = Sentence(text.strip(), voice, streaming, current_deadline(), received.send)
        self._batcher.submit(sentence)
        try:
            async for item in received.items():
                yield item
        finally:
            sentence.cancelled.set()  # it leaves the batch at the next step
            # No model work outlives the request: wait (shielded from our own cancellation) until it has.
            await asyncio.shield(asyncio.wrap_future(sentence.finished))

    async def _run(self, function: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, function)

    def _trim_later(self) -> None:
        """Trim on the worker (it owns the models), after whatever it is doing; not once stopped."""
        with contextlib.suppress(RuntimeError):  # the worker has shut down: stop() freed everything
            self._worker.submit(self.cache.trim)

    # -- worker thread only ----------------------------------------------------------------------

    def _load_runtime(self) -> None:
        if self._tts is not None:
            return
        began = time.perf_counter()
        gsv = prepare_process_for_gsv_tts()
        try:
            self.device = resolve_device(self.device_setting)
        except DeviceUnavailable as error:
            raise TTSError(str(error), status=503) from error
        try:
            plan = plan_precision(self.precision_setting, self.device)
        except PrecisionUnavailable as error:
            raise TTSError(str(error), status=503) from error
        if not self.device.startswith("cuda"):
            use_fast_cpu_attention()
        tts = gsv.TTS(
            models_dir=str(self.models_dir),
            device=self.device,
            dtype=plan.dtype,
            # gsv_tts' own KV caches serve its infer(), which we do not call (`batching` keeps its
            # own): the smallest one it accepts.
            gpt_cache=[(1, 16)],
            use_bert=False,  # True would fetch an ONNX BERT on CPU; the local one is attached below
            use_flash_attn=False,
            always_load_cnhubert=True,
            always_load_sv=True,
        )
        self.stats.loaded["import"] = time.perf_counter() - began
        config = tts.tts_config
        steps = [
            ("hubert", lambda: setattr(tts, "cnhubert_model", gsv.CNHubert(tts.cnhubert_path, config))),
            ("sv", lambda: setattr(tts, "sv_model", gsv.ERes2Net(tts.sv_path, config))),
            ("g2p", lambda: tts.init_language_module("zh")),
        ]
        if self.use_bert:
            steps.append(("bert", lambda: setattr(config, "cnroberta", self._load_bert(gsv, tts, plan.bert))))
        for name, load in steps:
            began = time.perf_counter()
            load()
            self.stats.loaded[name] = time.perf_counter() - began
        # gsv_tts ends every inference with a full gc.collect() (+ emptying the CUDA cache): ~0.25 s
        # per sentence with the GIL held, stalling every stream. Memory is freed when models unload.
        tts._empty_cache = _keep_cached_memory
        self.precision = plan
        self._tts, self.cache.tts, self.cache.precision = tts, tts, plan
        log.debug("GPT-SoVITS ready on %s (%s): %s", self.device, plan.describe(), self.stats.loaded)

    @staticmethod
    def _load_bert(gsv: Any, tts: Any, precision: str) -> Any:
        bert = gsv.CNRoberta(tts.cnroberta_path, tts.tts_config)
        if getattr(bert, "bert_model", None) is not None:  # not gsv_tts' own ONNX build
            convert_bert(bert.bert_model, precision)
        return bert

    def _release(self) -> None:
        self.cache.clear()
        tts, self._tts, self.cache.tts = self._tts, None, None
        if tts is not None:
            tts.tts_config.cnroberta = None
            tts.cnhubert_model = tts.sv_model = None
            free_cached_memory(tts)


def use_fast_cpu_attention() -> None:
    """gsv_tts picks PyTorch's reference ("math") attention on every CPU; the fused CPU kernel gives
    the same numbers (within 1e-6) at under half the cost of a decode step's attention. gsv_tts reads
    its choice from a module global, so that is where it is set (the engine is the only user)."""
    import gsv_tts.GPT_SoVITS.GPT.t2s_model as t2s_model
    from torch.nn.attention import SDPBackend

    t2s_model.SDPBACKEND = SDPBackend.FLASH_ATTENTION


def _keep_cached_memory() -> None:
    """Stands in for gsv_tts' per-inference clean-up (see `_load_runtime`)."""


def free_cached_memory(tts: Any) -> None:
    """gsv_tts' own clean-up: collect garbage and return the GPU's cached blocks (after unloading)."""
    type(tts)._empty_cache(tts)
