"""Starting the engines a configuration needs, recording what failed instead of raising: a
broken TTS engine makes its speakers unavailable, a broken LLM keeps /ready at 503, a broken
speech-to-text turns voice input off. What clients are told never includes an internal
exception's text; the log has the details."""

from __future__ import annotations

import logging

from chat2audio.runtime.errors import EngineError
from chat2audio.settings import Settings
from chat2audio.speakers import SpeakerRegistry
from chat2audio.wiring import create_llm, create_stt, create_tts
from llm.base import LLMBackend
from stt.base import STTBackend
from tts.base import TTSEngine

log = logging.getLogger(__name__)


async def start_tts_engines(registry: SpeakerRegistry, settings: Settings) -> None:
    """Start every engine some speaker needs and attach them to the registry."""
    engines: dict[str, TTSEngine] = {}
    failed: dict[str, TTSEngine] = {}  # built but not started: still able to name missing files
    problems: dict[str, str] = {}
    for name in sorted(registry.engine_names()):
        engine = None
        try:
            engine = create_tts(name, settings)
            await engine.start()
            engines[name] = engine
        except ImportError as error:
            problems[name] = f"engine {name!r} is not installed ({error.name or 'a package is missing'})"
        except Exception as error:
            problems[name] = f"engine {name!r} failed to start: {_client_safe(error)}"
            if engine is not None:
                failed[name] = engine
    registry.attach_engines(engines, problems, settings.models_dir, failed=failed)


async def start_llm(settings: Settings) -> tuple[LLMBackend | None, str | None]:
    """The started LLM backend, or None and what to tell clients."""
    try:
        llm = create_llm(settings)
        await llm.start()
        return llm, None
    except Exception as error:
        return None, f"LLM backend failed to start: {_client_safe(error)}"


async def start_stt(settings: Settings) -> tuple[STTBackend | None, str | None]:
    """The started speech-to-text backend (None when voice input is off or failed), and, when it
    failed, what voice requests are told."""
    try:
        backend = create_stt(settings)
        if backend is not None:
            await backend.start()
        return backend, None
    except Exception as error:
        _client_safe(error)  # logged; callers of voice input need not see the server's paths
        return None, "voice input failed to start on this server; see its log"


def _client_safe(error: Exception) -> str:
    """An engine's own message (written for users: "model not found: …"), else a pointer to
    the log. Expected conditions are logged without a traceback."""
    if isinstance(error, EngineError):
        log.warning("%s", error)
        return str(error)
    log.exception("unexpected failure while starting")
    return "unexpected error; see the server log"
