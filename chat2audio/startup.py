"""Starting the engines a configuration needs, recording what failed instead of raising: a
broken TTS engine makes its speakers unavailable, a broken LLM keeps /ready at 503, a broken
speech-to-text turns voice input off. What clients are told never includes an internal
exception's text; the log has the details."""

from __future__ import annotations

import logging

from chat2audio.runtime.errors import EngineError
from chat2audio.settings import Settings
from chat2audio.speakers import Speaker, SpeakerRegistry
from chat2audio.wiring import create_llm, create_stt, create_tts
from llm.base import LLMBackend
from stt.base import STTBackend
from tts.base import TTSEngine

log = logging.getLogger(__name__)


async def start_tts_engines(registry: SpeakerRegistry, settings: Settings) -> dict[str, str]:
    """Start every engine some speaker needs and attach them to the registry. Returns each
    engine's state in a few words, for the start-up summary."""
    engines: dict[str, TTSEngine] = {}
    failed: dict[str, TTSEngine] = {}  # built but not started: still able to name missing files
    problems: dict[str, str] = {}
    states: dict[str, str] = {}
    for name in sorted(registry.engine_names()):
        engine = None
        try:
            engine = create_tts(name, settings)
            await engine.start()
            engines[name] = engine
            states[name] = "started"
        except ImportError as error:
            problems[name] = f"engine {name!r} is not installed ({error.name or 'a package is missing'})"
            states[name] = f"not installed (no module {error.name or '?'})"
        except Exception as error:
            problems[name] = f"engine {name!r} failed to start: {_client_safe(error)}"
            not_downloaded = isinstance(error, EngineError) and error.not_downloaded
            states[name] = "not started: its models are not downloaded" if not_downloaded else "failed to start (see above)"
            if engine is not None:
                failed[name] = engine
    registry.attach_engines(engines, problems, settings.models_dir, failed=failed)
    return states


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
        (log.debug if error.not_downloaded else log.warning)("%s", error)  # the start-up summary says it
        return str(error)
    log.exception("unexpected failure while starting")
    return "unexpected error; see the server log"


def startup_summary(
    settings: Settings,
    *,
    seconds: float,
    llm: LLMBackend | None,
    llm_error: str | None,
    engine_states: dict[str, str],
    speakers: list[Speaker],
    stt: STTBackend | None,
    stt_error: str | None,
) -> str:
    """What a person starting the service needs to know, in a dozen lines: what runs, who can
    speak, what to download for the others, and where to go. Details are at DEBUG."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    speaking = [s for s in speakers if s.available]
    broken = [s for s in speakers if not s.can_chat or s.voice is None]  # a file that does not parse
    voiceless = [s for s in speakers if not s.available and s not in broken]
    if llm is None:
        head = f"chat2audio is NOT ready after {seconds:.1f} s: {llm_error} (/ready answers 503)"
    else:
        head = f"chat2audio ready in {seconds:.1f} s"
    lines = [head, f"  LLM       {llm.describe() if llm is not None else 'not started'}"]
    lines += [f"  TTS       {name}: {state}" for name, state in engine_states.items()]
    lines.append(f"  speakers  {len(speaking)} of {len(speakers)} can speak" + (f": {_names(speaking)}" if speaking else ""))
    if voiceless:
        lines.append(f"            {len(voiceless)} reply in text only until their voices are set up: {_names(voiceless)}")
        hint = "python scripts/download_models.py fetches the voices; " if any(s.download_command for s in voiceless) else ""
        lines.append(f"            {hint}GET /speakers says what each one lacks")
    if broken:
        lines.append(f"            {len(broken)} broken, see the errors above: {_names(broken)}")
    if stt is not None:
        lines.append(f"  voice in  {stt.name}")
    else:
        lines.append(f"  voice in  {'failed to start (see above)' if stt_error else 'off (CHAT2AUDIO_STT_BACKEND turns it on)'}")
    lines.append(f"  page      {base}/    API docs {base}/docs")
    return "\n".join(lines)


def _names(speakers: list[Speaker], limit: int = 8) -> str:
    names = [s.id for s in speakers]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
