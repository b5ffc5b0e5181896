"""The voice cache: prepared voices kept in gsv_tts' own dicts, an LRU over the idle ones, the
voices held by running replies, and the voices that failed to load.

gsv_tts keys its models and reference features by whatever string it is given; the cache keys them
by file path (models, shared between voices) and by `voice_key` (reference features), and reaches
into its private dicts (`gpt_models`, `sovits_models`, `prompt_audio_cache`, `spk_audio_cache`) and
helpers (`_get_prompt`, `_get_spec`). Everything that touches them runs on the engine's worker
thread; `holding` and `remembered_failure` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts.base import TTSError
from tts.gpt_sovits.precision import PrecisionPlan, convert_gpt, convert_vocoder
from tts.gpt_sovits.stats import EngineStats
from tts.gpt_sovits.voice import (
    GPTSoVITSVoice,
    missing_files_problem,
    ref_text_with_final_pause,
    voice_files,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedVoice:
    """A prepared voice: the keys of its models in gsv_tts' dicts and its reference features."""

    key: str  # the voice's entry in gsv_tts' prompt / speaker caches
    gpt_key: str
    sovits_key: str
    ref_phones: int
    prompt_tokens: int


# (inode, size, mtime) of each voice file, None if missing: a change means the voice is worth another try.
Signature = tuple[tuple[int, int, int] | None, ...]


def voice_key(voice: GPTSoVITSVoice, models_dir: Path) -> str:
    """The voice's entry in the engine's caches: what its prepared features depend on."""
    paths = voice_files(voice, models_dir).values()
    weights = [repr(weight) for weight in voice.timbre_weights().values()] if voice.timbre else []
    identity = "\n".join([*(str(path) for path in paths), *weights, voice.ref_language, voice.ref_text])
    return "voice:" + hashlib.sha256(identity.encode()).hexdigest()[:24]


def files_signature(paths: list[Path]) -> Signature:
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


def _unloadable(relative: str, why: str) -> str:
    return f"voice file {relative} could not be loaded ({why})"


class VoiceCache:
    """Prepared voices, loaded once; `cache_size` bounds the idle ones (least recently used go
    first); a voice held by a running reply (`holding`) is never evicted."""

    def __init__(self, *, models_dir: Path, cache_size: int, stats: EngineStats) -> None:
        self.models_dir = models_dir
        self.cache_size = max(1, cache_size)
        self.stats = stats
        self.tts: Any = None  # gsv_tts' TTS while the engine runs
        self.precision: PrecisionPlan | None = None  # set with `tts`: each model is converted as it loads
        self.voices: OrderedDict[str, PreparedVoice] = OrderedDict()
        # Voice key → replies holding it. Changed on the event loop, read by the worker: hence the lock.
        self._holds: Counter[str] = Counter()
        self._holds_lock = threading.Lock()
        # Voice key → (its files' signature, why it failed): a broken voice fails fast until a file
        # changes. Written by the worker, read by check_voice on the event loop; single dict
        # operations are atomic under the GIL.
        self._failures: dict[str, tuple[Signature, str]] = {}

    # -- any thread ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def holding(self, voice: GPTSoVITSVoice) -> Iterator[None]:
        """Keep `voice` from eviction while the block runs (it is loaded by its first use). The
        caller trims on the worker afterwards: a voice let go may leave the cache over its size."""
        key = voice_key(voice, self.models_dir)
        with self._holds_lock:
            self._holds[key] += 1
        try:
            yield
        finally:
            with self._holds_lock:
                self._holds[key] -= 1
                if not self._holds[key]:
                    del self._holds[key]

    def remembered_failure(self, voice: GPTSoVITSVoice, models_dir: Path) -> str | None:
        """Why this voice failed to load, while its files are the ones that failed."""
        key = voice_key(voice, models_dir)
        remembered = self._failures.get(key)
        if remembered is None:
            return None
        signature, reason = remembered
        return reason if signature == files_signature(list(voice_files(voice, models_dir).values())) else None

    # -- worker thread only ----------------------------------------------------------------------

    def prepare(self, voice: GPTSoVITSVoice) -> PreparedVoice:
        """The voice's models and reference features, loaded once and kept in an LRU."""
        key = voice_key(voice, self.models_dir)
        if key in self.voices:
            self.voices.move_to_end(key)
            return self.voices[key]
        failure = self.remembered_failure(voice, self.models_dir)
        if failure:  # loading it again would fail again, slowly: the files have not changed
            raise TTSError(failure, status=503)
        paths = voice_files(voice, self.models_dir)
        missing = missing_files_problem(voice, self.models_dir)
        if missing:
            raise TTSError(missing, status=503)
        self.stats.voice_loads += 1
        # Taken before loading: a file replaced while it loads gets another try.
        signature = files_signature(list(paths.values()))
        prepared = self._load_voice(voice, key, paths, signature)
        self._failures.pop(key, None)
        self.voices[key] = prepared
        self.stats.voice_preparations += 1
        self.trim()
        return prepared

    def trim(self) -> None:
        """Evict the least recently used idle voices beyond `cache_size`; held voices stay."""
        if self.tts is None:
            return
        with self._holds_lock:
            held = set(self._holds)
        idle = [key for key in self.voices if key not in held]
        for key in idle[: max(0, len(idle) - self.cache_size)]:
            self._evict(key)

    def clear(self) -> None:
        """Evict every voice and free its models (the engine is stopping)."""
        for key in list(self.voices):
            self._evict(key)

    @contextlib.contextmanager
    def _loading(self, key: str, signature: Signature, reason: str, keys: tuple[str, str]) -> Iterator[None]:
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

    def _load_voice(self, voice: GPTSoVITSVoice, key: str, paths: dict[str, Path], signature: Signature) -> PreparedVoice:
        import torch

        tts = self.tts
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
        ge, sv_embedding = self._timbre(voice, sovits, key, signature, keys)
        from gsv_tts.TextProcessor import get_phones_and_bert

        with self._loading(key, signature, "could not turn ref_text into phonemes", keys):
            with torch.inference_mode():
                ref_text = ref_text_with_final_pause(voice)
                phones1, _, bert1, _ = get_phones_and_bert(ref_text, tts.tts_config, voice.ref_language)
        tts.prompt_audio_cache[key] = {"prompt": prompt, "phones1": phones1, "bert1": bert1}
        tts.spk_audio_cache[key] = {"ge": {sovits_key: ge}, "sv_emb": sv_embedding}
        return PreparedVoice(key, gpt_key, sovits_key, ref_phones=len(phones1), prompt_tokens=int(prompt.shape[-1]))

    def _timbre(
        self, voice: GPTSoVITSVoice, sovits: Any, key: str, signature: Signature, keys: tuple[str, str]
    ) -> tuple[Any, Any]:
        """The voice's `ge` and speaker embedding: its timbre clips' own, blended by their weights
        (as gsv_tts blends a dict `spk_audio_path`: each clip's `ge`, weighted, summed)."""
        import torch

        tts, ge, sv_embedding = self.tts, None, None
        with torch.inference_mode():
            for relative, weight in voice.timbre_weights().items():
                with self._loading(key, signature, _unloadable(relative, "not a readable audio clip"), keys):
                    spectrum, audio_16k = tts._get_spec(sovits.hps, str(self.models_dir / relative))
                    clip_embedding = tts.sv_model.compute_embedding3(audio_16k)
                    clip_ge = sovits.vq_model.get_ge(spectrum, clip_embedding)
                if weight == 1.0:  # one clip: its own numbers, untouched
                    ge, sv_embedding = clip_ge, clip_embedding
                elif ge is None:
                    ge, sv_embedding = clip_ge * weight, clip_embedding * weight
                else:
                    ge, sv_embedding = ge + clip_ge * weight, sv_embedding + clip_embedding * weight
        return ge, sv_embedding

    def _load_gpt(self, gpt_key: str) -> None:
        tts = self.tts
        if gpt_key not in tts.gpt_models:
            tts.load_gpt_model(gpt_key)
            if self.precision is not None:
                convert_gpt(tts.gpt_models[gpt_key].t2s_model, self.precision.gpt)
            self.stats.gpt_loads += 1

    def _load_sovits(self, sovits_key: str) -> None:
        tts = self.tts
        if sovits_key not in tts.sovits_models:
            with warnings.catch_warnings():  # gsv_tts builds the decoder with the deprecated weight_norm
                warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)
                tts.load_sovits_model(sovits_key)
            if self.precision is not None:
                convert_vocoder(tts.sovits_models[sovits_key].vq_model, self.precision.vocoder)
            self.stats.sovits_loads += 1

    def _evict(self, key: str) -> None:
        tts, voice = self.tts, self.voices.pop(key)
        tts.prompt_audio_cache.pop(key, None)
        tts.spk_audio_cache.pop(key, None)
        self.stats.evictions += 1
        self._unload_unused(voice.gpt_key, voice.sovits_key)

    def _unload_unused(self, gpt_key: str, sovits_key: str) -> None:
        """Free weights that no cached voice uses any more (models are shared by file path)."""
        tts, unloaded = self.tts, False
        if gpt_key in tts.gpt_models and all(v.gpt_key != gpt_key for v in self.voices.values()):
            tts.unload_gpt_model(gpt_key)
            unloaded = True
        if sovits_key in tts.sovits_models and all(v.sovits_key != sovits_key for v in self.voices.values()):
            tts.unload_sovits_model(sovits_key)
            unloaded = True
        if unloaded:  # the engine turned gsv_tts' own clean-up off; this is where memory comes back
            type(tts)._empty_cache(tts)
