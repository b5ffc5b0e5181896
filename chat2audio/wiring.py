"""The one name → factory table: which engine a configuration name means, built from `Settings`.

Engines below take their own small keyword-only configuration and never see `Settings`; this
module is where the application's settings are turned into those arguments. Heavy imports
(torch, gsv_tts, ctypes libraries) happen inside the factories, so an engine whose package is
missing does not break the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from chat2audio.settings import Settings
from llm.base import LLMBackend
from stt.base import STTBackend
from tts.base import TTSEngine, VoiceParams


def _connections(settings: Settings) -> int:
    return max(100, 2 * settings.max_concurrent_requests)


# -- LLM ------------------------------------------------------------------------------------


def _transformers_llm(settings: Settings) -> LLMBackend:
    from llm.embedded import embedded_gguf_path
    from llm.transformers_backend import TransformersBackend

    source = settings.model_path(settings.llm_model) if settings.llm_model else embedded_gguf_path()
    return TransformersBackend(
        model_source=source, cache_dir=settings.cache_dir, device=settings.device,
        trust_remote_code=settings.trust_remote_code, max_batch=settings.llm_batch_size, cores=settings.core_share(),
        precision=settings.llm_precision,
    )


def _openai_llm(settings: Settings) -> LLMBackend:
    from llm.openai_backend import OpenAIBackend

    return OpenAIBackend(
        base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
        timeout_s=settings.llm_timeout_s, max_connections=_connections(settings),
        context_tokens=settings.llm_context_tokens, tokenizer=settings.llm_tokenizer, models_dir=settings.models_dir,
        trust_remote_code=settings.trust_remote_code,
    )


def _scripted_llm(settings: Settings) -> LLMBackend:
    from llm.scripted import ScriptedLLM

    return ScriptedLLM(token_delay_s=settings.testing.scripted_token_delay_s)


LLM_BACKENDS: dict[str, Callable[[Settings], LLMBackend]] = {
    "transformers": _transformers_llm,
    "openai": _openai_llm,
    "scripted": _scripted_llm,
}


def create_llm(settings: Settings) -> LLMBackend:
    """Build (not start) the configured LLM backend."""
    return LLM_BACKENDS[settings.llm_backend](settings)


# -- speech-to-text -------------------------------------------------------------------------


def _transformers_stt(settings: Settings) -> STTBackend:
    from stt.transformers_backend import TransformersSTTBackend

    return TransformersSTTBackend(
        model_dir=settings.model_path(settings.stt_model) if settings.stt_model else None,
        device=settings.device, language=settings.stt_language, max_audio_seconds=settings.stt_max_audio_seconds,
    )


def _openai_stt(settings: Settings) -> STTBackend:
    from stt.openai_backend import OpenAISTTBackend

    return OpenAISTTBackend(
        base_url=settings.stt_base_url, model=settings.stt_model, api_key=settings.stt_api_key,
        language=settings.stt_language, max_audio_seconds=settings.stt_max_audio_seconds,
        max_connections=_connections(settings),
    )


STT_BACKENDS: dict[str, Callable[[Settings], STTBackend]] = {
    "transformers": _transformers_stt,
    "openai": _openai_stt,
}


def create_stt(settings: Settings) -> STTBackend | None:
    """Build (not start) the configured speech-to-text backend; None when voice input is off."""
    if settings.stt_backend == "none":
        return None
    return STT_BACKENDS[settings.stt_backend](settings)


# -- TTS ------------------------------------------------------------------------------------


def _espeak(settings: Settings) -> TTSEngine:
    import espeakng_loader  # the wheel that bundles libespeak-ng and its data

    from tts.espeak import EspeakEngine

    return EspeakEngine(library_path=espeakng_loader.get_library_path(), data_path=espeakng_loader.get_data_path())


def _gpt_sovits(settings: Settings) -> TTSEngine:
    for package in ("gsv_tts", "torch", "torchaudio"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"{package} is not installed (pip install gsv-tts-lite)", name=package)
    from tts.gpt_sovits import GPTSoVITSEngine

    budget = {}
    if settings.testing.gpt_sovits_tokens_per_phone:
        budget = {"tokens_per_phone": settings.testing.gpt_sovits_tokens_per_phone, "min_tokens": 10}
    return GPTSoVITSEngine(
        **budget,
        models_dir=settings.models_dir, device=settings.device, cache_size=settings.tts_cache_size,
        max_batch=settings.tts_batch_size, precision=settings.tts_precision, cores=settings.core_share(),
        adaptive_chunks=settings.tts_chunk_pacing == "adaptive",
    )


def _scripted_tts(settings: Settings) -> TTSEngine:
    from tts.scripted import ScriptedTTS

    return ScriptedTTS(rtf=settings.testing.scripted_tts_rtf)


# engine name → (module holding the light `VOICE_MODEL`, factory)
TTS_ENGINES: dict[str, tuple[str, Callable[[Settings], TTSEngine]]] = {
    "espeak": ("tts.espeak", _espeak),
    "gpt-sovits": ("tts.gpt_sovits", _gpt_sovits),
    "scripted": ("tts.scripted", _scripted_tts),
}


def voice_model(engine: str) -> type[VoiceParams]:
    """The pydantic model of this engine's `[voice]` table; importing it must stay cheap."""
    module: Any = importlib.import_module(TTS_ENGINES[engine][0])
    return module.VOICE_MODEL


def create_tts(engine: str, settings: Settings) -> TTSEngine:
    """Build (not start) a TTS engine. Raises ImportError when its package is not installed."""
    return TTS_ENGINES[engine][1](settings)
