"""The GPT-SoVITS engine: start, stop and synthesize, every gsv_tts call on its own worker thread.

gsv_tts keeps mutable state on its `TTS` object and on the models (KV caches, CUDA graphs, the
SoVITS stream overlap), so every call into it runs on that one thread. torch and gsv_tts are
imported by `start()`, on that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from chat2audio.runtime.audio import clean_audio
from chat2audio.runtime.devices import DeviceUnavailable, resolve_device
from chat2audio.runtime.scheduling import DeadlineExecutor
from chat2audio.runtime.text import is_speakable
from chat2audio.runtime.threads import stream_from_thread
from tts.base import TTSError, VoiceParams
from tts.gpt_sovits.base_models import base_model_problems
from tts.gpt_sovits.cache import PreparedVoice, VoiceCache
from tts.gpt_sovits.guard import Cancelled, GenerationGuard
from tts.gpt_sovits.process import prepare_process_for_gsv_tts
from tts.gpt_sovits.stats import EngineStats
from tts.gpt_sovits.voice import GPTSoVITSVoice, voice_file_problems

log = logging.getLogger(__name__)

SAMPLE_RATE = 32000  # every v2 / v2Pro / v2ProPlus SoVITS decoder outputs 32 kHz
MAX_SENTENCE_CHARS = 500  # the BERT reads 510 characters at most; the GPT context usually ends sooner


class GPTSoVITSEngine:
    """Synthesizes GPT-SoVITS voices on one worker thread, with an LRU of prepared voices.

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
        stream_chunk_tokens: int = 25,
    ) -> None:
        """`min_tokens + tokens_per_phone × phonemes` bounds each sentence's GPT tokens (25 = 1 s of
        speech; real speech is ~3 per phoneme), and `max_context` the prompt plus generation."""
        self.models_dir = Path(models_dir)
        self.device_setting = device
        self.use_bert = use_bert
        self.stream_chunk_tokens = stream_chunk_tokens
        self.max_context = max_context
        self.stats = EngineStats()
        self.device: str | None = None
        self._guard = GenerationGuard(min_tokens=min_tokens, tokens_per_phone=tokens_per_phone, max_context=max_context)
        self.cache = VoiceCache(models_dir=self.models_dir, cache_size=cache_size, guard=self._guard, stats=self.stats)
        self._worker = DeadlineExecutor("gpt-sovits")  # one synthesis at a time, most urgent first
        self._tts: Any = None

    @property
    def cache_size(self) -> int:
        return self.cache.cache_size

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        problems = base_model_problems(self.models_dir, ("zh",), use_bert=self.use_bert)
        if problems:
            log.error("GPT-SoVITS models dir %s is incomplete: %s", self.models_dir, "; ".join(problems))
            raise TTSError(f"GPT-SoVITS base models missing: {'; '.join(problems)}", status=503)
        await self._run(self._load_runtime)

    async def stop(self) -> None:
        if self._tts is not None:
            await self._run(self._release)
        # A synthesis in progress finishes on its thread; the event loop does not wait for it.
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

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

    async def synthesize(self, text: str, voice: VoiceParams, *, streaming: bool = False) -> AsyncIterator[np.ndarray]:
        assert isinstance(voice, GPTSoVITSVoice)
        if self._tts is None:
            raise TTSError("GPT-SoVITS engine is not started", status=503)
        if not is_speakable(text):
            return
        if len(text) > MAX_SENTENCE_CHARS:
            raise TTSError(
                f"sentence too long for GPT-SoVITS ({len(text)} characters; at most {MAX_SENTENCE_CHARS})", status=422
            )

        def produce(emit: Callable[[np.ndarray], bool], cancelled: threading.Event) -> None:
            self._synthesize_blocking(text.strip(), voice, emit, cancelled, streaming=streaming)

        async with contextlib.aclosing(stream_from_thread(produce, executor=self._worker)) as chunks:
            async for chunk in chunks:
                yield chunk

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
        dtype = "float16" if self.device.startswith("cuda") else "float32"
        contexts = sorted({n for n in (256, 512, 768) if n < self.max_context} | {self.max_context})
        tts = gsv.TTS(
            models_dir=str(self.models_dir),
            device=self.device,
            dtype=dtype,
            gpt_cache=[(1, n) for n in contexts],  # batch 1 only: the batch-4 defaults cost 4× the KV cache
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
            steps.append(("bert", lambda: setattr(config, "cnroberta", gsv.CNRoberta(tts.cnroberta_path, config))))
        for name, load in steps:
            began = time.perf_counter()
            load()
            self.stats.loaded[name] = time.perf_counter() - began
        # gsv_tts ends every inference with a full gc.collect() (+ emptying the CUDA cache): ~0.25 s
        # per sentence with the GIL held, stalling every stream. Memory is freed when models unload.
        tts._empty_cache = _keep_cached_memory
        self._tts = self.cache.tts = tts
        log.info("GPT-SoVITS ready on %s (%s): %s", self.device, dtype, self.stats.loaded)

    def _release(self) -> None:
        self.cache.clear()
        tts, self._tts, self.cache.tts = self._tts, None, None
        if tts is not None:
            tts.tts_config.cnroberta = None
            tts.cnhubert_model = tts.sv_model = None
            free_cached_memory(tts)

    def _synthesize_blocking(
        self,
        text: str,
        voice: GPTSoVITSVoice,
        emit: Callable[[np.ndarray], bool],
        cancelled: threading.Event,
        *,
        streaming: bool,
    ) -> None:
        tts = self._tts
        if tts is None:
            raise TTSError("GPT-SoVITS engine is stopped", status=503)
        prepared = self.cache.prepare(voice)
        if cancelled.is_set():
            return
        self._guard.arm(ref_phones=prepared.ref_phones, prompt_tokens=prepared.prompt_tokens, cancelled=cancelled)
        arguments = _infer_arguments(text, voice, prepared)
        try:
            self._infer(tts, arguments, emit, cancelled, streaming=streaming)
            self.stats.completed += 1
        except Cancelled:
            self.stats.cancelled += 1
        except TTSError:
            raise
        except ValueError as error:  # gsv_tts' word for text it cannot phonemize
            log.warning("GPT-SoVITS could not synthesize %r: %s", text[:80], error)
            raise TTSError("GPT-SoVITS could not turn this sentence into phonemes", status=422) from error
        except Exception as error:
            log.exception("GPT-SoVITS synthesis failed")
            raise TTSError("GPT-SoVITS synthesis failed; see the server log") from error
        finally:
            self.stats.tokens_last = self._guard.disarm()
            # An abandoned stream leaves its overlap on the SoVITS model; the next stream would blend it in.
            tts.sovits_models[prepared.sovits_key].vq_model.enc_p.y_overlap = None

    def _infer(
        self,
        tts: Any,
        arguments: dict[str, Any],
        emit: Callable[[np.ndarray], bool],
        cancelled: threading.Event,
        *,
        streaming: bool,
    ) -> None:
        """One sentence through gsv_tts; raises `Cancelled` once the consumer has gone."""
        if streaming:
            clips = tts.infer_stream(
                **arguments, is_cut_text=False, cut_mute=0.2, stream_chunk=self.stream_chunk_tokens, debug=False
            )
            try:
                for clip in clips:
                    if not emit(clean_audio(clip.audio_data)):
                        raise Cancelled
            finally:
                clips.close()
        else:
            clip = tts.infer(**arguments)
            if not cancelled.is_set():
                emit(clean_audio(clip.audio_data))


def _keep_cached_memory() -> None:
    """Stands in for gsv_tts' per-inference clean-up (see `_load_runtime`)."""


def free_cached_memory(tts: Any) -> None:
    """gsv_tts' own clean-up: collect garbage and return the GPU's cached blocks (after unloading)."""
    type(tts)._empty_cache(tts)


def _infer_arguments(text: str, voice: GPTSoVITSVoice, prepared: PreparedVoice) -> dict[str, Any]:
    """gsv_tts' arguments for one sentence: the prepared voice's cache entries stand for its audio paths."""
    return dict(
        spk_audio_path=prepared.key,
        prompt_audio_path=prepared.key,
        prompt_audio_text=voice.ref_text,
        text=text,
        text_language=voice.target_language,
        prompt_language=voice.ref_language,
        top_k=voice.top_k,
        top_p=voice.top_p,
        temperature=voice.temperature,
        repetition_penalty=voice.repetition_penalty,
        noise_scale=voice.noise_scale,
        speed=voice.speed_factor,
        gpt_model=prepared.gpt_key,
        sovits_model=prepared.sovits_key,
    )
