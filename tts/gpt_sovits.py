"""GPT-SoVITS v2/v2Pro voices through gsv-tts-lite (module `gsv_tts`), offline and one synthesis at a time.

Importing this module is cheap: torch and gsv_tts are imported by `GPTSoVITSEngine.start()`, on the
engine's worker thread. gsv_tts keeps mutable state on its `TTS` object and on the models (KV
caches, CUDA graphs, the SoVITS stream overlap), so every call into it runs on that one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import AfterValidator, Field

from chat2audio.runtime.text import is_speakable
from chat2audio.runtime.threads import stream_from_thread
from tts.base import TTSError, VoiceParams

log = logging.getLogger(__name__)

SAMPLE_RATE = 32000  # every v2 / v2Pro / v2ProPlus SoVITS decoder outputs 32 kHz
SEMANTIC_HZ = 25  # GPT tokens per second of speech
MAX_SENTENCE_CHARS = 500  # the BERT reads 510 characters at most; the GPT context usually ends sooner

HUBERT_DIR = "chinese-hubert-base"
BERT_DIR = "chinese-roberta-wwm-ext-large"
SV_FILE = "sv/pretrained_eres2netv2w24s4ep4.ckpt"
G2P_FILES = {
    "zh": ("g2p/zh/opencpop-strict.txt",),
    "en": (
        "g2p/en/cmudict.rep",
        "g2p/en/cmudict-fast.rep",
        "g2p/en/engdict-hot.rep",
        "g2p/en/g2p_en/checkpoint20.npz",
        "g2p/en/g2p_en/homographs.en",
    ),
}
WHERE_TO_GET = (
    "get them with `python scripts/download_models.py` (huggingface lj1995/GPT-SoVITS for the models; "
    "the g2p tables from the GSV-TTS-Lite g2p release)"
)

# Anything a voice can say: a sentence of only punctuation or emoji has nothing to synthesize.
_PAUSE_END = tuple("。！？!?.，,；;：:…~")

Language = Literal["zh", "en", "ja", "auto"]


def _relative_model_path(value: str) -> str:
    if not value or value != value.strip() or "\0" in value:
        raise ValueError("must be a non-empty path without surrounding spaces")
    if "\\" in value:
        raise ValueError("use '/' as the path separator")
    path = PurePosixPath(value)
    if path.is_absolute() or PureWindowsPath(value).drive:
        raise ValueError("must be relative to the models dir (CHAT2AUDIO_MODELS_DIR), not absolute")
    if ".." in path.parts:
        raise ValueError("must stay inside the models dir (no '..')")
    return value


ModelPath = Annotated[str, AfterValidator(_relative_model_path)]


class GPTSoVITSVoice(VoiceParams):
    """`[voice]` table of a GPT-SoVITS speaker: its weights, its reference clip, its sampling."""

    gpt_model: ModelPath = Field(description="GPT (text → semantic) .ckpt, relative to the models dir")
    sovits_model: ModelPath = Field(description="SoVITS (semantic → audio) .pth, relative to the models dir")
    ref_audio: ModelPath = Field(description="3–10 s of the speaker, relative to the models dir")
    ref_text: str = Field(max_length=1000, description="what ref_audio says")
    ref_language: Language = "zh"
    target_language: Language = "zh"
    speed_factor: float = Field(1.0, ge=0.5, le=2.0)
    top_k: int = Field(15, ge=1, le=1024)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    repetition_penalty: float = Field(1.35, ge=1.0, le=3.0)
    noise_scale: float = Field(0.5, ge=0.0, le=1.0, description="SoVITS sampling noise; 0 = deterministic")

    def model_files(self) -> list[str]:
        return [self.gpt_model, self.sovits_model, self.ref_audio]


VOICE_MODEL = GPTSoVITSVoice


@dataclass
class EngineStats:
    """Counters for tests and benchmarks: what was loaded and how syntheses ended."""

    gpt_loads: int = 0
    sovits_loads: int = 0
    voice_loads: int = 0  # voices not in the cache that were loaded or tried (failures included)
    voice_preparations: int = 0  # voices loaded successfully
    evictions: int = 0
    completed: int = 0
    cancelled: int = 0
    tokens_last: int = 0  # GPT tokens of the last synthesis (25 per second of speech)
    loaded: dict[str, float] = field(default_factory=dict)  # what start() loaded → seconds


@dataclass
class _Voice:
    """A prepared voice: the keys of its models in gsv_tts' dicts and its reference features."""

    key: str  # the voice's entry in gsv_tts' prompt / speaker caches
    gpt_key: str
    sovits_key: str
    ref_phones: int
    prompt_tokens: int


# (inode, size, mtime) of each voice file, None if missing: a change means the voice is worth another try.
_Signature = tuple[tuple[int, int, int] | None, ...]


def _voice_files(voice: GPTSoVITSVoice, models_dir: Path) -> dict[str, Path]:
    return {name: models_dir / relative for name, relative in zip(("gpt", "sovits", "ref"), voice.model_files())}


def _voice_key(voice: GPTSoVITSVoice, models_dir: Path) -> str:
    """The voice's entry in the engine's caches: what its prepared features depend on."""
    paths = _voice_files(voice, models_dir).values()
    identity = "\n".join([*(str(path) for path in paths), voice.ref_language, voice.ref_text])
    return "voice:" + hashlib.sha256(identity.encode()).hexdigest()[:24]


def _signature(paths: list[Path]) -> _Signature:
    def one(path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    return tuple(one(path) for path in paths)


def _transient(error: BaseException) -> bool:
    """Failures that say nothing about the files (out of memory, I/O): worth retrying as they are."""
    return isinstance(error, (MemoryError, OSError)) or type(error).__name__ == "OutOfMemoryError"


class _Cancelled(Exception):
    """Raised inside the GPT loop once the consumer has gone."""


class _GenerationGuard:
    """Bounds each GPT pass by the text's length and aborts it on cancellation.

    Works through forward hooks on the GPT's own layers, so gsv_tts' loops stay untouched: the text
    embedding runs once per pass (it sees the phonemes), the output layer once per token.
    """

    MIN_STEPS = 12  # gsv_tts forbids EOS for the first 10 steps: never force it before then

    def __init__(self, *, min_tokens: int, tokens_per_phone: float, max_context: int) -> None:
        self.min_tokens = min_tokens
        self.tokens_per_phone = tokens_per_phone
        self.max_context = max_context
        self.ref_phones = 0
        self.prompt_tokens = 0
        self.cancelled: threading.Event | None = None
        self.limit = 0
        self.steps = 0

    def arm(self, voice: _Voice, cancelled: threading.Event) -> None:
        self.ref_phones, self.prompt_tokens, self.cancelled = voice.ref_phones, voice.prompt_tokens, cancelled
        self.steps = 0

    def attach(self, t2s_model: Any) -> list[Any]:
        eos = int(t2s_model.EOS)

        def on_text(module, args):
            phones = int(args[0].shape[-1])
            room = self.max_context - phones - self.prompt_tokens - 1
            if room < self.MIN_STEPS:
                raise TTSError(
                    f"sentence too long for GPT-SoVITS ({phones - self.ref_phones} phonemes; the context holds "
                    f"{self.max_context} tokens with the reference clip): split it or use a shorter ref_audio",
                    status=422,
                )
            wanted = max(self.MIN_STEPS, round(self.min_tokens + self.tokens_per_phone * (phones - self.ref_phones)))
            if wanted > room:
                log.warning(
                    "GPT-SoVITS context caps this sentence at %d tokens (%.1f s of speech)", room, room / SEMANTIC_HZ
                )
            self.limit = min(room, wanted)
            self.steps = 0

        def on_logits(module, args, output):
            if self.cancelled is not None and self.cancelled.is_set():
                raise _Cancelled
            self.steps += 1
            if self.steps > self.limit + 1:  # +1: the prompt pass samples the first token
                forced = output.new_full(output.shape, float("-inf"))
                forced[:, eos] = 0.0
                return forced
            return None

        return [
            t2s_model.ar_text_embedding.register_forward_pre_hook(on_text),
            t2s_model.ar_predict_layer.register_forward_hook(on_logits),
        ]


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
        self.cache_size = max(1, cache_size)
        self.use_bert = use_bert
        self.stream_chunk_tokens = stream_chunk_tokens
        self.max_context = max_context
        self.stats = EngineStats()
        self.device: str | None = None
        self._guard = _GenerationGuard(
            min_tokens=min_tokens, tokens_per_phone=tokens_per_phone, max_context=max_context
        )
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt-sovits")
        self._tts: Any = None
        self._voices: OrderedDict[str, _Voice] = OrderedDict()
        self._hooks: dict[str, list[Any]] = {}
        # Voice key → replies holding it. Changed on the event loop, read by the worker: hence the lock.
        self._holds: Counter[str] = Counter()
        self._holds_lock = threading.Lock()
        # Voice key → (its files' signature, why it failed): a broken voice fails fast until a file
        # changes. Written by the worker, read by check_voice on the event loop; single dict
        # operations are atomic under the GIL.
        self._failures: dict[str, tuple[_Signature, str]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        problems = self._base_problems(("zh",))
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
        problems = [
            f"missing {relative} in the models dir"
            for relative in voice.model_files()
            if not (models_dir / relative).exists()
        ]
        if not voice.ref_text.strip():
            problems.append("ref_text is empty: write what ref_audio says")
        failure = self._remembered_failure(voice, models_dir)  # it failed to load at request time
        if failure:
            problems.append(failure)
        return problems + self._base_problems((voice.ref_language, voice.target_language), models_dir)

    @contextlib.asynccontextmanager
    async def reply_voice(self, voice: VoiceParams) -> AsyncIterator[None]:
        """Hold `voice` loaded for one reply: it is prepared by its first sentence and not evicted
        before the reply ends, however many other voices speak in between."""
        assert isinstance(voice, GPTSoVITSVoice)
        key = _voice_key(voice, self.models_dir)
        with self._holds_lock:
            self._holds[key] += 1
        try:
            yield
        finally:
            with self._holds_lock:
                self._holds[key] -= 1
                if not self._holds[key]:
                    del self._holds[key]
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

    # -- checks (any thread) ---------------------------------------------------------------------

    def _remembered_failure(self, voice: GPTSoVITSVoice, models_dir: Path) -> str | None:
        """Why this voice failed to load, while its files are the ones that failed."""
        key = _voice_key(voice, models_dir)
        remembered = self._failures.get(key)
        if remembered is None:
            return None
        signature, reason = remembered
        return reason if signature == _signature(list(_voice_files(voice, models_dir).values())) else None

    def _base_problems(self, languages, models_dir: Path | None = None) -> list[str]:
        root = models_dir or self.models_dir
        wanted = {HUBERT_DIR: ("config.json", "preprocessor_config.json"), SV_FILE: ()}
        if self.use_bert:
            wanted[BERT_DIR] = ("config.json",)
        missing = []
        for relative, inside in wanted.items():
            path = root / relative
            if not path.exists() or any(not (path / name).exists() for name in inside):
                missing.append(relative + ("/" if inside else ""))
            elif inside and not any(path.glob("*.bin")) and not any(path.glob("*.safetensors")):
                missing.append(f"{relative}/ weights")
        for language in sorted({"zh", "en"} if "auto" in languages else set(languages) & set(G2P_FILES)):
            missing += [relative for relative in G2P_FILES[language] if not (root / relative).exists()]
        if not missing:
            return []
        return [f"missing {', '.join(missing)} in the models dir: {WHERE_TO_GET}"]

    # -- worker thread only ----------------------------------------------------------------------

    async def _run(self, function: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, function)

    def _load_runtime(self) -> None:
        if self._tts is not None:
            return
        # The directory is complete (checked), so nothing should reach for a hub; make sure.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        began = time.perf_counter()
        gsv = _import_gsv_tts()
        import torch

        self.device = _resolve_device(self.device_setting, torch)
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
        self._tts = tts
        log.info("GPT-SoVITS ready on %s (%s): %s", self.device, dtype, self.stats.loaded)

    def _release(self) -> None:
        for key in list(self._voices):
            self._evict(key)
        tts, self._tts = self._tts, None
        if tts is not None:
            tts.tts_config.cnroberta = None
            tts.cnhubert_model = tts.sv_model = None
            tts._empty_cache()

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
        prepared = self._prepare(voice)
        if cancelled.is_set():
            return
        self._guard.arm(prepared, cancelled)
        arguments = dict(
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
        try:
            if streaming:
                clips = tts.infer_stream(
                    **arguments, is_cut_text=False, cut_mute=0.2, stream_chunk=self.stream_chunk_tokens, debug=False
                )
                try:
                    for clip in clips:
                        if not emit(_as_audio(clip.audio_data)):
                            raise _Cancelled
                finally:
                    clips.close()
            else:
                clip = tts.infer(**arguments)
                if not cancelled.is_set():
                    emit(_as_audio(clip.audio_data))
            self.stats.completed += 1
        except _Cancelled:
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
            self.stats.tokens_last = max(0, self._guard.steps - 1)
            self._guard.cancelled = None
            # An abandoned stream leaves its overlap on the SoVITS model; the next stream would blend it in.
            tts.sovits_models[prepared.sovits_key].vq_model.enc_p.y_overlap = None

    def _prepare(self, voice: GPTSoVITSVoice) -> _Voice:
        """The voice's models and reference features, loaded once and kept in an LRU."""
        key = _voice_key(voice, self.models_dir)
        if key in self._voices:
            self._voices.move_to_end(key)
            return self._voices[key]
        failure = self._remembered_failure(voice, self.models_dir)
        if failure:  # loading it again would fail again, slowly: the files have not changed
            raise TTSError(failure, status=503)
        paths = _voice_files(voice, self.models_dir)
        for name, relative in zip(paths, voice.model_files()):
            if not paths[name].exists():
                raise TTSError(f"missing {relative} in the models dir", status=503)
        self.stats.voice_loads += 1
        # Taken before loading: a file replaced while it loads gets another try.
        signature = _signature(list(paths.values()))
        prepared = self._load_voice(voice, key, paths, signature)
        self._failures.pop(key, None)
        self._voices[key] = prepared
        self.stats.voice_preparations += 1
        self._trim()
        return prepared

    @contextlib.contextmanager
    def _loading(self, key: str, signature: _Signature, reason: str, keys: tuple[str, str]) -> Iterator[None]:
        """One step of loading a voice. On failure: free what it loaded, remember why (unless the
        cause is transient), and answer 503 with a reason naming only paths inside the models dir."""
        try:
            yield
        except Exception as error:
            log.exception("GPT-SoVITS voice unusable: %s", reason)
            self._unload_unused(*keys)
            if not _transient(error):
                self._failures[key] = (signature, reason)
            raise TTSError(reason, status=503) from error

    def _load_voice(self, voice: GPTSoVITSVoice, key: str, paths: dict[str, Path], signature: _Signature) -> _Voice:
        import torch

        tts = self._tts
        keys = gpt_key, sovits_key = str(paths["gpt"]), str(paths["sovits"])
        with self._loading(key, signature, _unloadable(voice.gpt_model, "not a GPT-SoVITS checkpoint"), keys):
            self._load_gpt(gpt_key)
        with self._loading(key, signature, _unloadable(voice.sovits_model, "not a GPT-SoVITS v2 model"), keys):
            self._load_sovits(sovits_key)
        sovits = tts.sovits_models[sovits_key]
        with self._loading(key, signature, _unloadable(voice.ref_audio, "not a readable audio clip"), keys):
            with torch.inference_mode():
                # The semantic prompt comes from this voice's own SoVITS quantizer (gsv_tts would use
                # whichever SoVITS it loaded first, and key it by the audio path alone).
                prompt = tts._get_prompt(tts.cnhubert_model, sovits, str(paths["ref"]))
                spectrum, audio_16k = tts._get_spec(sovits.hps, str(paths["ref"]))
                sv_embedding = tts.sv_model.compute_embedding3(audio_16k)
                ge = sovits.vq_model.get_ge(spectrum, sv_embedding)
        from gsv_tts.TextProcessor import get_phones_and_bert

        with self._loading(key, signature, "could not turn ref_text into phonemes", keys):
            with torch.inference_mode():
                phones1, _, bert1, _ = get_phones_and_bert(_with_final_pause(voice), tts.tts_config, voice.ref_language)
        tts.prompt_audio_cache[key] = {"prompt": prompt, "phones1": phones1, "bert1": bert1}
        tts.spk_audio_cache[key] = {"ge": {sovits_key: ge}, "sv_emb": sv_embedding}
        return _Voice(key, gpt_key, sovits_key, ref_phones=len(phones1), prompt_tokens=int(prompt.shape[-1]))

    def _load_gpt(self, gpt_key: str) -> None:
        tts = self._tts
        if gpt_key not in tts.gpt_models:
            tts.load_gpt_model(gpt_key)
            self._hooks[gpt_key] = self._guard.attach(tts.gpt_models[gpt_key].t2s_model)
            self.stats.gpt_loads += 1

    def _load_sovits(self, sovits_key: str) -> None:
        tts = self._tts
        if sovits_key not in tts.sovits_models:
            with warnings.catch_warnings():  # gsv_tts builds the decoder with the deprecated weight_norm
                warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
                tts.load_sovits_model(sovits_key)
            self.stats.sovits_loads += 1

    def _trim(self) -> None:
        """Evict the least recently used idle voices beyond `cache_size`; held voices stay."""
        if self._tts is None:
            return
        with self._holds_lock:
            held = set(self._holds)
        idle = [key for key in self._voices if key not in held]
        for key in idle[: max(0, len(idle) - self.cache_size)]:
            self._evict(key)

    def _trim_later(self) -> None:
        """Trim on the worker (it owns the models), after whatever it is doing; not once stopped."""
        with contextlib.suppress(RuntimeError):  # the worker has shut down: stop() freed everything
            self._worker.submit(self._trim)

    def _evict(self, key: str) -> None:
        tts, voice = self._tts, self._voices.pop(key)
        tts.prompt_audio_cache.pop(key, None)
        tts.spk_audio_cache.pop(key, None)
        self.stats.evictions += 1
        self._unload_unused(voice.gpt_key, voice.sovits_key)

    def _unload_unused(self, gpt_key: str, sovits_key: str) -> None:
        """Free weights that no cached voice uses any more (models are shared by file path)."""
        tts = self._tts
        if gpt_key in tts.gpt_models and all(v.gpt_key != gpt_key for v in self._voices.values()):
            for hook in self._hooks.pop(gpt_key, []):
                hook.remove()
            tts.unload_gpt_model(gpt_key)
        if sovits_key in tts.sovits_models and all(v.sovits_key != sovits_key for v in self._voices.values()):
            tts.unload_sovits_model(sovits_key)


def _unloadable(relative: str, why: str) -> str:
    return f"voice file {relative} could not be loaded ({why})"


def _with_final_pause(voice: GPTSoVITSVoice) -> str:
    ref_text = voice.ref_text.strip()
    if ref_text and not ref_text.endswith(_PAUSE_END):
        ref_text += "." if voice.ref_language == "en" else "。"  # as GPT-SoVITS itself does
    return ref_text


def _as_audio(samples: np.ndarray) -> np.ndarray:
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1))
    return np.clip(audio, -1.0, 1.0, out=audio)


def _resolve_device(setting: str, torch: Any) -> str:
    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TTSError(f"CHAT2AUDIO_DEVICE={setting} but torch sees no CUDA device", status=503)
        return "cuda:0" if setting == "cuda" else setting
    return setting


class _GsvModules:
    """What the engine uses from gsv_tts, imported together."""

    def __init__(self) -> None:
        from gsv_tts import TTS
        from gsv_tts.GPT_SoVITS.Featurizer import CNHubert, CNRoberta
        from gsv_tts.GPT_SoVITS.GPT import t2s_model
        from gsv_tts.GPT_SoVITS.SV import ERes2Net

        self.TTS, self.CNHubert, self.CNRoberta, self.ERes2Net = TTS, CNHubert, CNRoberta, ERes2Net
        # Its whole-sentence GPT loop draws a progress bar on stderr for every sentence.
        t2s_model.tqdm = functools.partial(t2s_model.tqdm, disable=True)


def _import_gsv_tts() -> _GsvModules:
    """Import gsv_tts without its process-wide side effects on logging and warnings.

    At import it calls `logging.basicConfig(level=INFO)` and `warnings.filterwarnings("ignore")`;
    the service's own logging and warning filters are put back afterwards.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with warnings.catch_warnings():
        modules = _GsvModules()
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return modules
