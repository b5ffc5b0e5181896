"""The speaker registry: `speakers/<id>.toml` (voice) + `prompts/<prompt>.md` (persona).

Read once at start-up. A broken file makes that one speaker unavailable, with the file and field
named; it never takes the others down. Requests look speakers up by id in a dict, so nothing a
client sends is ever used to build a path. Whether a voice works is asked of its engine again on
every lookup: a voice file can fail to load at request time, and be fixed, while the service runs.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chat2audio.errors import SpeakerUnavailable, UnknownSpeaker
from chat2audio.wiring import TTS_ENGINES, voice_model
from llm.base import GenerationOptions
from tts.base import TTSEngine, VoiceParams

log = logging.getLogger(__name__)

SPEAKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STYLE_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class GenerationOverrides(BaseModel):
    """`[llm]` table: per-speaker generation settings over the global ones."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.5, le=3.0)

    def apply(self, options: GenerationOptions) -> GenerationOptions:
        return replace(options, **self.model_dump(exclude_none=True))


# The voice names OpenAI's speech API knows; clients offer them by default.
OPENAI_STOCK_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


class SpeakerFile(BaseModel):
    """The top level of a speaker file; `[voice]` is validated by the engine's own model."""

    model_config = ConfigDict(extra="forbid")

    engine: str
    prompt: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    display_name: str | None = None
    description: str | None = None
    language: str | None = Field(None, description="language the replies are written in")
    speech_language: str | None = Field(None, description="language they are spoken in, if another")
    openai_voices: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        default_factory=list, description="OpenAI voice names (alloy, nova, …) this speaker answers to"
    )
    llm: GenerationOverrides = Field(default_factory=GenerationOverrides)
    voice: dict = Field(default_factory=dict)
    styles: dict[Annotated[str, Field(pattern=STYLE_NAME)], dict] = Field(
        default_factory=dict,
        description="moods: `[styles.<name>]` tables of `[voice]` fields that differ (the LLM switches with \"[name]\")",
    )


@dataclass(frozen=True)
class Speaker:
    id: str
    engine: str | None = None
    display_name: str | None = None
    description: str | None = None
    language: str | None = None
    system_prompt: str = ""
    voice: VoiceParams | None = None
    generation: GenerationOverrides = field(default_factory=GenerationOverrides)
    speech_language: str | None = None
    openai_voices: tuple[str, ...] = ()
    styles: dict[str, VoiceParams] = field(default_factory=dict)  # name → the voice in that mood
    problems: tuple[str, ...] = ()  # the speaker cannot talk at all (file or prompt broken)
    voice_problems: tuple[str, ...] = ()  # it cannot speak aloud (engine, voice, model files)

    @property
    def available(self) -> bool:
        return not self.problems and not self.voice_problems

    @property
    def can_chat(self) -> bool:
        """Text-only replies need the persona, not the voice."""
        return not self.problems

    @property
    def reason(self) -> str | None:
        return "; ".join(self.problems + self.voice_problems) or None

    @property
    def download_command(self) -> str | None:
        """How to fetch what the voice lacks, when files are missing (engines say "missing …")."""
        if self.voice is None or not any(problem.startswith("missing ") for problem in self.voice_problems):
            return None
        return self.voice.download_command(self.id)

    def voice_in(self, style: str | None) -> VoiceParams | None:
        """The voice in `style` (its own voice for None)."""
        return self.styles[style] if style else self.voice

    def voices(self) -> list[VoiceParams]:
        """Its voice and each of its styles'."""
        return [self.voice, *self.styles.values()] if self.voice is not None else []

    def role_prompt(self, style_prompt: str, styles: Iterable[str]) -> str:
        """Its role-play prompt, followed (if `styles` names any) by `style_prompt` telling the
        model the tags of those styles, which it may use (`{tags}`: "[happy], [sad]")."""
        tags = ", ".join(f"[{name}]" for name in styles)
        if not tags:
            return self.system_prompt
        return f"{self.system_prompt}\n\n{style_prompt.format(tags=tags)}".strip()

    @property
    def translates(self) -> bool:
        """Replies are written in `language` and spoken in `speech_language`."""
        return bool(self.speech_language and self.language and self.speech_language != self.language)


def _field_errors(error: ValidationError, prefix: str = "") -> list[str]:
    return [
        f"field {prefix + '.'.join(str(part) for part in item['loc']) or '(top level)'}: {item['msg']}"
        for item in error.errors()
    ]


def parse_speaker_file(path: Path, prompts_dir: Path) -> Speaker:
    """Parse one speaker file; every problem is recorded on the speaker, never raised."""
    speaker_id = path.stem
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        return Speaker(speaker_id, problems=(f"{path.name}: not valid TOML ({error})",))
    try:
        spec = SpeakerFile.model_validate(data)
    except ValidationError as error:
        return Speaker(speaker_id, problems=tuple(f"{path.name}: {p}" for p in _field_errors(error)))
    speaker = Speaker(
        speaker_id, engine=spec.engine, display_name=spec.display_name or speaker_id,
        description=spec.description, language=spec.language, speech_language=spec.speech_language,
        openai_voices=tuple(spec.openai_voices),
        generation=spec.llm,
    )
    problems: list[str] = []
    voice_problems: list[str] = []
    if spec.engine not in TTS_ENGINES:
        voice_problems.append(
            f"{path.name}: field engine: unknown engine {spec.engine!r} (known: {', '.join(TTS_ENGINES)})"
        )
    else:
        try:
            speaker = replace(speaker, voice=voice_model(spec.engine).model_validate(spec.voice))
        except ImportError as error:
            voice_problems.append(f"engine {spec.engine!r} is not installed ({error.name or error})")
        except ValidationError as error:
            voice_problems.extend(f"{path.name}: {p}" for p in _field_errors(error, prefix="voice."))
        if speaker.voice is not None:
            styles: dict[str, VoiceParams] = {}
            for name, table in spec.styles.items():
                try:
                    styles[name] = speaker.voice.with_style(table)
                except ValidationError as error:
                    voice_problems.extend(f"{path.name}: {p}" for p in _field_errors(error, prefix=f"styles.{name}."))
            speaker = replace(speaker, styles=styles)
    prompt_path = prompts_dir / f"{spec.prompt or speaker_id}.md"
    try:
        speaker = replace(speaker, system_prompt=prompt_path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        problems.append(f"{path.name}: field prompt: prompt file {prompt_path.name} not found in the prompts dir")
    return replace(speaker, problems=tuple(problems), voice_problems=tuple(voice_problems))


class SpeakerRegistry:
    """All speakers, their engines, and whether each can speak right now."""

    def __init__(self, speakers: dict[str, Speaker], engines: dict[str, TTSEngine]) -> None:
        self._parsed = dict(speakers)  # as read from the files, before any engine had its say
        self._speakers = speakers
        self.engines = engines
        self._models_dir: Path | None = None

    @classmethod
    def scan(cls, speakers_dir: Path, prompts_dir: Path) -> SpeakerRegistry:
        speakers: dict[str, Speaker] = {}
        for path in sorted(speakers_dir.glob("*.toml")):
            if not SPEAKER_ID.match(path.stem):
                log.warning("ignoring speaker file %s: ids are letters, digits, '_' and '-'", path.name)
                continue
            speaker = parse_speaker_file(path, prompts_dir)
            if speaker.reason and speaker.voice is None:
                log.error("speaker %s is broken: %s", speaker.id, speaker.reason)
            speakers[speaker.id] = speaker
        return cls(speakers, {})

    def engine_names(self) -> set[str]:
        """Engines that at least one well-formed speaker needs."""
        return {s.engine for s in self._speakers.values() if s.voice is not None and s.engine}

    def attach_engines(
        self,
        engines: dict[str, TTSEngine],
        engine_problems: dict[str, str],
        models_dir: Path,
        *,
        failed: dict[str, TTSEngine] | None = None,
    ) -> None:
        """Record the started engines and mark each speaker available or not, with the reason.
        An engine that was built but failed to start still names each speaker's missing files."""
        failed = failed or {}
        self.engines = engines
        self._models_dir = models_dir
        for speaker_id, speaker in list(self._speakers.items()):
            if speaker.voice is None or speaker.engine is None:
                continue
            problems = list(speaker.voice_problems)
            if speaker.engine in failed:
                problems.extend(
                    failed[speaker.engine].check_voice(speaker.voice, models_dir) or [engine_problems[speaker.engine]]
                )
            elif speaker.engine in engine_problems:
                problems.append(engine_problems[speaker.engine])
            elif speaker.engine in engines:
                problems.extend(_voice_problems(engines[speaker.engine], speaker, models_dir))
            speaker = replace(speaker, voice_problems=tuple(problems))
            self._speakers[speaker_id] = speaker
            if speaker.reason:  # files not downloaded or an engine not started: the summary counts them
                log.debug("speaker %s cannot speak: %s", speaker_id, speaker.reason)

    def all(self) -> list[Speaker]:
        return [self._current(speaker) for speaker in self._speakers.values()]

    def for_voice(self, voice: str, stock_default: str | None) -> Speaker | None:
        """The speaker an OpenAI-style `voice` names: a speaker id (any case), then a name some
        speaker file claims (`openai_voices`), then, for OpenAI's stock names, `stock_default`."""
        wanted = voice.lower()
        for speaker in self._speakers.values():
            if speaker.id.lower() == wanted:
                return speaker
        for speaker in self._speakers.values():
            if wanted in (name.lower() for name in speaker.openai_voices):
                return speaker
        if wanted in OPENAI_STOCK_VOICES and stock_default:
            return self._speakers.get(stock_default)
        return None

    def require(self, speaker_id: str) -> Speaker:
        """The speaker as its files describe it, able to talk or not; 404 if unknown."""
        speaker = self._speakers.get(speaker_id)
        if speaker is None:
            known = ", ".join(sorted(self._speakers)) or "(none)"
            raise UnknownSpeaker(f"unknown speaker {speaker_id[:64]!r}; known speakers: {known}")
        return speaker

    def get(self, speaker_id: str, *, needs_voice: bool = True) -> Speaker:
        """The speaker, ready to speak (or just to chat); 404 if unknown, 503 with the reason if
        unavailable."""
        speaker = self._current(self.require(speaker_id))
        if not (speaker.available if needs_voice else speaker.can_chat):
            raise SpeakerUnavailable(f"speaker {speaker_id!r} is unavailable: {speaker.reason}")
        return speaker

    def _current(self, speaker: Speaker) -> Speaker:
        """The speaker with its started engine's verdict on the voice taken now (a few stat calls):
        a voice that failed to load at request time shows as unavailable, a fixed one as available."""
        engine = self.engines.get(speaker.engine or "")
        if engine is None or speaker.voice is None or self._models_dir is None:
            return speaker  # no started engine: nothing can change until the next start-up
        parsed = self._parsed[speaker.id].voice_problems
        problems = parsed + tuple(_voice_problems(engine, speaker, self._models_dir))
        if problems == speaker.voice_problems:
            return speaker
        speaker = replace(speaker, voice_problems=problems)
        self._speakers[speaker.id] = speaker
        if speaker.available:
            log.info("speaker %s is available again", speaker.id)
        else:
            log.warning("speaker %s unavailable: %s", speaker.id, speaker.reason)
        return speaker

    def engine_for(self, speaker: Speaker) -> TTSEngine:
        assert speaker.engine is not None
        return self.engines[speaker.engine]


def _voice_problems(engine: TTSEngine, speaker: Speaker, models_dir: Path) -> list[str]:
    """What keeps the speaker's voice, or one of its styles, from speaking."""
    assert speaker.voice is not None
    problems = engine.check_voice(speaker.voice, models_dir)
    for name, voice in speaker.styles.items():
        problems += [f"style {name}: {problem}" for problem in engine.check_voice(voice, models_dir) if problem not in problems]
    return problems
