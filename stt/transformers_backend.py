"""STT backend `transformers`: a local Whisper directory (openai/whisper-* in Hugging Face format)
run in this process, one transcription at a time on its own worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from chat2audio.runtime.devices import resolve_device
from chat2audio.runtime.generation import stop_when_set
from stt.base import STTError, decode_audio

log = logging.getLogger(__name__)

# openai-whisper's own cap on tokens per 30 s window (half the decoder's 448 positions): ample
# for speech, and a bound on the work a hallucinating model can do.
DEFAULT_MAX_NEW_TOKENS = 224
# Whisper hears 30 s at a time; longer audio is cut into windows transcribed one after another.
WINDOW_SECONDS = 30


class TransformersSTTBackend:
    """One Whisper model in this process; transcriptions queue on its single worker thread."""

    name = "transformers"

    def __init__(
        self,
        *,
        model_dir: Path | None,
        device: str = "auto",
        language: str | None = None,
        max_audio_seconds: float = 60.0,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> None:
        self.model_dir = model_dir
        self._requested_device = device
        self._default_language = language or None
        self._max_audio_seconds = max_audio_seconds
        self._max_new_tokens = max_new_tokens
        self.device = "cpu"
        self.load_seconds: float | None = None
        self._model: Any = None
        self._processor: Any = None
        self._generation_config: Any = None
        self._dtype: Any = None
        self._sampling_rate = 16000
        # One worker thread = transcriptions queue up instead of fighting over the same weights.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-whisper")

    async def start(self) -> None:
        """Check the model directory, then load the model and processor on the worker thread."""
        if self.model_dir is None:
            raise ValueError(
                "the transformers STT backend needs CHAT2AUDIO_STT_MODEL, a Whisper directory in Hugging Face "
                "format (relative paths are under the models dir), e.g. CHAT2AUDIO_STT_MODEL=whisper-small"
            )
        _check_whisper_dir(self.model_dir)
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)
        self.load_seconds = time.perf_counter() - started
        log.debug("Whisper %s loaded on %s in %.1f s", self.model_dir, self.device, self.load_seconds)

    async def stop(self) -> None:
        """Let a running transcription finish, drop queued ones, and free the model."""
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)
        self._model = self._processor = self._generation_config = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    async def transcribe(self, audio: bytes, *, filename: str | None = None, language: str | None = None) -> str:
        """The text spoken in `audio`; `filename` is not needed (the format is sniffed)."""
        if self._model is None:
            raise STTError("the speech-to-text model is not loaded", status=503)
        language = self._whisper_language(language or self._default_language)
        # Decoding runs beside the model's queue, so bad uploads fail without waiting in it.
        samples = await asyncio.to_thread(
            decode_audio, audio, target_rate=self._sampling_rate, max_seconds=self._max_audio_seconds
        )
        cancelled = threading.Event()
        job = self._worker.submit(self._transcribe_blocking, samples, language, cancelled)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # The caller is gone: stop between tokens, and return only once the model is free.
            cancelled.set()
            if not job.cancel():
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wrap_future(job))
            raise

    def _whisper_language(self, language: str | None) -> str | None:
        """`language` as a token key of this model (e.g. "<|zh|>"), or STTError(422) if it has none."""
        if language is None:
            return None
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        wanted = language.strip().lower()
        code = TO_LANGUAGE_CODE.get(wanted, wanted.split("-")[0].split("_")[0].strip("<|>"))
        lang_to_id = getattr(self._generation_config, "lang_to_id", None) or {}
        if not getattr(self._generation_config, "is_multilingual", bool(lang_to_id)):
            if code == "en":
                return None  # An English-only model takes no language token.
            raise STTError(f"language {language!r} is not supported: this Whisper model is English-only", status=422)
        token = f"<|{code}|>"
        if token not in lang_to_id:
            raise STTError(
                f"language {language!r} is not supported by this Whisper model; use a code such as 'en' or 'zh'",
                status=422,
            )
        return token

    # -- worker thread only ----------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.device = resolve_device(self._requested_device)
        self._dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self._processor = WhisperProcessor.from_pretrained(self.model_dir, local_files_only=True)
        model = WhisperForConditionalGeneration.from_pretrained(
            self.model_dir, dtype=self._dtype, local_files_only=True
        )
        self._model = model.to(self.device).eval()
        self._sampling_rate = self._processor.feature_extractor.sampling_rate
        self._generation_config = self._bounded_generation_config(model)
        # The first generate() pays one-off set-up costs; pay them here, not in a user's request.
        self._transcribe_blocking(
            np.zeros(self._sampling_rate, dtype=np.float32), None, threading.Event(), max_new_tokens=1
        )

    def _bounded_generation_config(self, model: Any) -> Any:
        config = copy.deepcopy(model.generation_config)
        if getattr(config, "decoder_start_token_id", None) is None:
            raise STTError(f"{self.model_dir}/generation_config.json lacks decoder_start_token_id", status=503)
        # Whisper's generate() reads `max_length` as "new tokens after the prompt" (it adds the
        # prompt's length itself); `max_new_tokens` would work too but logs a warning per call.
        config.max_new_tokens = None
        config.max_length = self._max_new_tokens
        # One decoder pass per window: without this, a timestamp token emitted by mistake makes
        # generate() re-seek inside the window, possibly without end.
        config.force_unique_generate_call = True
        config.return_timestamps = False
        no_timestamps = getattr(config, "no_timestamps_token_id", None)
        if no_timestamps is not None:
            # We ask for text without timestamps: a timestamp token here is noise; never emit it.
            timestamps = range(no_timestamps + 1, model.config.vocab_size)
            config.suppress_tokens = sorted(set(config.suppress_tokens or []) | set(timestamps))
        config.do_sample = False
        config.num_beams = 1
        return config

    def _transcribe_blocking(
        self,
        samples: np.ndarray,
        language: str | None,
        cancelled: threading.Event,
        *,
        max_new_tokens: int | None = None,
    ) -> str:
        import torch

        window = WINDOW_SECONDS * self._sampling_rate
        texts = []
        for start in range(0, len(samples), window):
            if cancelled.is_set():
                break
            features = self._processor.feature_extractor(
                samples[start : start + window], sampling_rate=self._sampling_rate, return_tensors="pt"
            ).input_features.to(self.device, self._dtype)
            # generate() fills in per-call fields (language, …): give it its own copy.
            config = copy.deepcopy(self._generation_config)
            if max_new_tokens is not None:
                config.max_length = max_new_tokens
            kwargs: dict[str, Any] = {}
            if getattr(config, "is_multilingual", False):
                # Always transcribe (never translate); language=None means detect it.
                kwargs.update(task="transcribe", language=language)
            with torch.inference_mode():
                tokens = self._model.generate(
                    features,
                    generation_config=config,
                    stopping_criteria=stop_when_set(cancelled),
                    **kwargs,
                )
            texts.append(
                self._processor.batch_decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
            )
        return "".join(texts).strip()


def _check_whisper_dir(model_dir: Path) -> None:
    """Fail with the path and the missing piece before transformers fails with something vaguer."""
    if not model_dir.is_dir():
        raise STTError(f"Whisper model directory not found: {model_dir}", status=503)
    config_file = model_dir / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise STTError(f"{config_file} is missing or not a JSON object", status=503) from None
    if model_type != "whisper":
        raise STTError(f"{config_file}: model_type is {model_type!r}, not 'whisper'", status=503)
    if not (model_dir / "preprocessor_config.json").is_file():
        raise STTError(f"{model_dir} has no preprocessor_config.json (the Whisper feature extractor)", status=503)
