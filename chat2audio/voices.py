"""Which speaker a client's name for a voice stands for: OpenAI's voice names, and GPT-SoVITS
api_v2's reference-clip and weights paths. Domain rules the compatibility routes share; they
raise domain errors, which each route answers in its own protocol's shape."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from chat2audio.errors import InvalidInput, UnknownVoice
from chat2audio.speakers import OPENAI_STOCK_VOICES, Speaker, SpeakerRegistry
from tts.base import VoiceParams
from tts.gpt_sovits import GPTSoVITSVoice

# SillyTavern's gpt-sovits-v2 provider sends `./参考音频/<voice_id>.wav`: the reference folder of the
# GPT-SoVITS-V2 fork it was written for, whose `/speakers` lists that folder.
FORK_REFERENCE_DIR = "参考音频"
MAX_LISTED = 40  # clips or weights named in an error message
MAX_AUX_CLIPS = 8  # auxiliary clips one request may blend into a voice's timbre

VoiceFile = Literal["ref_audio", "gpt_model", "sovits_model"]


# -- OpenAI voice names ----------------------------------------------------------------------------


def speaker_for_voice(
    registry: SpeakerRegistry, default_voice: str, name: str, *, param: str, fallback: bool = False
) -> Speaker:
    """The speaker a voice (or, with `fallback`, a model name) stands for. With `fallback`, a
    name that is no speaker means the default voice's speaker (a chat model name like "gpt-4o").
    A voice that cannot speak here is the client's 400, not a 503 its SDK would retry in vain."""
    default = default_voice or None
    speaker = registry.for_voice(name, default)
    if speaker is None and fallback and default:
        speaker = registry.for_voice(default, None)
    if speaker is None:
        speaking = [s.id for s in registry.all() if s.available]
        stock = f"; OpenAI's names ({', '.join(OPENAI_STOCK_VOICES)}) map to {default}" if default else ""
        raise UnknownVoice(f"unknown voice {name[:64]!r}; voices: {', '.join(speaking) or '(none)'}{stock}", param=param)
    current = registry.get(speaker.id, needs_voice=False) if speaker.can_chat else speaker
    if not fallback and not current.available:
        raise InvalidInput(f"voice {name[:64]!r} ({speaker.id}) cannot speak on this server: {current.reason}", param=param)
    return speaker


def openai_voices(registry: SpeakerRegistry, default_voice: str) -> list[dict[str, Any]]:
    """The speakers that can speak now, each with the OpenAI names it answers to: those its file
    claims, and, for the default voice, the stock names no file claims."""
    speakers = registry.all()
    claimed = {name.lower() for speaker in speakers for name in speaker.openai_voices}
    unclaimed = [name for name in OPENAI_STOCK_VOICES if name not in claimed]

    def aliases(speaker: Speaker) -> list[str]:
        default = speaker.id == default_voice
        return sorted({*speaker.openai_voices, *(unclaimed if default else [])})

    return [
        {"id": speaker.id, "name": speaker.display_name or speaker.id, "aliases": aliases(speaker)}
        for speaker in speakers if speaker.available
    ]


# -- GPT-SoVITS api_v2 paths ---------------------------------------------------------------------------


def gpt_sovits_speakers(registry: SpeakerRegistry) -> list[Speaker]:
    return [s for s in registry.all() if s.engine == "gpt-sovits" and isinstance(s.voice, GPTSoVITSVoice)]


def owned_files(registry: SpeakerRegistry, kind: VoiceFile) -> list[tuple[str, Speaker]]:
    """(path relative to the models dir, its speaker) for that file of every GPT-SoVITS speaker."""
    return [(posixpath.normpath(_voice_file(s.voice, kind)), s) for s in gpt_sovits_speakers(registry)]


def _voice_file(voice: GPTSoVITSVoice, kind: VoiceFile) -> str:
    return {"ref_audio": voice.ref_audio, "gpt_model": voice.gpt_model, "sovits_model": voice.sovits_model}[kind]


def relative_to_models_dir(client_path: str, models_dir: Path) -> str | None:
    """The client's path, normalized, relative to the models dir; None when it points outside.
    Worked out on the text alone: the file system is not asked about anything a client names."""
    normalized = posixpath.normpath(client_path.strip().replace("\\", "/"))
    if posixpath.isabs(normalized):
        roots = {os.path.normpath(models_dir.absolute()), os.path.normpath(models_dir.resolve())}
        for root in roots:
            if normalized.startswith(root.rstrip("/") + "/"):
                return normalized[len(root.rstrip("/")) + 1:]
        return None
    if normalized == ".." or normalized.startswith("../"):
        return None
    return normalized


def _matching(relative: str, owned: list[tuple[str, Speaker]]) -> list[tuple[str, Speaker]]:
    """The owned files a path names: the same path, else (for a bare file name) the same name."""
    same_path = [entry for entry in owned if entry[0] == relative]
    if same_path or "/" in relative:
        return same_path
    return [entry for entry in owned if posixpath.basename(entry[0]) == relative]


def speaker_for_ref_audio(registry: SpeakerRegistry, models_dir: Path, client_path: str) -> Speaker:
    """The GPT-SoVITS speaker whose reference clip `client_path` names: its path relative to the
    models dir, its absolute path inside it, its bare file name, or `参考音频/<speaker id>.wav`.
    Only the speakers' own paths are compared with it: no file a client names is ever opened."""
    owned = owned_files(registry, "ref_audio")
    relative = relative_to_models_dir(client_path, models_dir)
    if relative is None:
        raise InvalidInput(f"ref_audio_path {client_path[:200]!r} is outside the models dir; {_listing(owned, 'clips')}")
    matches = _matching(relative, owned)
    folder, _, file_name = relative.rpartition("/")
    if not matches and folder == FORK_REFERENCE_DIR:
        speaker_id = posixpath.splitext(file_name)[0]
        matches = [entry for entry in owned if entry[1].id == speaker_id]
    speakers = {speaker.id: speaker for _, speaker in matches}
    if not speakers:
        raise InvalidInput(f"ref_audio_path {client_path[:200]!r} is no speaker's reference clip; {_listing(owned, 'clips')}")
    if len(speakers) > 1:
        raise InvalidInput(
            f"ref_audio_path {client_path[:200]!r} is the reference clip of several speakers ({', '.join(sorted(speakers))}); "
            f"name one as {FORK_REFERENCE_DIR}/<speaker id>.wav"
        )
    return next(iter(speakers.values()))


def aux_clips_timbre(
    registry: SpeakerRegistry, models_dir: Path, voice: GPTSoVITSVoice, client_paths: list[str]
) -> dict[str, float]:
    """api_v2's tone fusion (`aux_ref_audio_paths`): `voice`'s timbre blended equally with each
    auxiliary clip's, the voice's own (perhaps already a blend) counting as one clip. Each clip
    must be a reference clip some GPT-SoVITS speaker owns, named as `ref_audio_path` may be."""
    if len(client_paths) > MAX_AUX_CLIPS:
        raise InvalidInput(f"aux_ref_audio_paths names {len(client_paths)} clips; at most {MAX_AUX_CLIPS} may be blended")
    owned = owned_clips(registry)
    timbre = dict(voice.timbre_weights())
    for client_path in client_paths:
        relative = relative_to_models_dir(client_path, models_dir)
        clips = {clip for clip, _ in _matching(relative, owned)} if relative is not None else set()
        if len(clips) != 1:
            why = "is the name of several clips; give its path" if clips else "is no speaker's reference clip"
            raise InvalidInput(f"aux_ref_audio_paths: {client_path[:200]!r} {why}; {_listing(owned, 'clips')}")
        clip = clips.pop()
        if not (models_dir / clip).is_file():
            raise InvalidInput(f"aux_ref_audio_paths: {clip} is missing from the models dir")
        timbre[clip] = timbre.get(clip, 0.0) + 1.0
    return timbre


def owned_clips(registry: SpeakerRegistry) -> list[tuple[str, Speaker]]:
    """(clip relative to the models dir, its speaker) for every reference clip of every
    GPT-SoVITS speaker: its voice's and its styles' `ref_audio` and timbre clips."""
    clips: dict[str, Speaker] = {}
    for speaker in gpt_sovits_speakers(registry):
        for voice in speaker.voices():
            assert isinstance(voice, GPTSoVITSVoice)
            for clip in (voice.ref_audio, *(voice.timbre or ())):
                clips.setdefault(posixpath.normpath(clip), speaker)
    return list(clips.items())


def check_owned(registry: SpeakerRegistry, models_dir: Path, client_path: str, kind: VoiceFile, what: str, failed: str) -> None:
    """Raises unless `client_path` names some GPT-SoVITS speaker's file of that kind; `what`
    and `failed` word the message as api_v2 does."""
    owned = owned_files(registry, kind)
    relative = relative_to_models_dir(client_path, models_dir)
    if relative is None:
        raise InvalidInput(f"{failed}: {client_path[:200]!r} is outside the models dir; {_listing(owned, 'files')}")
    if not _matching(relative, owned):
        raise InvalidInput(f"{failed}: {client_path[:200]!r} is no speaker's {what}; {_listing(owned, 'files')}")


def _listing(owned: list[tuple[str, Speaker]], noun: str) -> str:
    entries = [f"{path} ({speaker.id})" for path, speaker in owned]
    more = f", and {len(entries) - MAX_LISTED} more" if len(entries) > MAX_LISTED else ""
    return f"known {noun}: {', '.join(entries[:MAX_LISTED]) or '(none)'}{more}"


def voice_with(voice: VoiceParams, settings: dict[str, Any]) -> VoiceParams:
    """`voice` with some of its settings replaced for one request, validated by its own model."""
    if not settings:
        return voice
    try:
        return type(voice).model_validate({**voice.model_dump(), **settings})
    except ValidationError as error:
        problem = error.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None
