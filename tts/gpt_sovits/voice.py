"""The `[voice]` table of a GPT-SoVITS speaker and the checks on its files.

Light on purpose: the speaker registry imports `VOICE_MODEL` to validate speaker files.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from tts.base import VoiceParams

Language = Literal["zh", "en", "ja", "auto"]

# Characters that already end ref_text with a pause; otherwise one is added, as GPT-SoVITS does.
_PAUSE_END = tuple("。！？!?.，,；;：:…~")


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
    """`[voice]` table of a GPT-SoVITS speaker: its weights, its reference clip, its sampling.

    `ref_audio`/`ref_text` prompt the GPT: how the voice speaks (a style may change them); the
    timbre (SoVITS' `ge`) comes from `timbre`, a weighted blend of clips, or from ref_audio alone."""

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
    timbre: dict[ModelPath, float] | None = Field(
        None,
        description="clips (relative to the models dir) → weights > 0: the timbre is their weighted "
        "blend; none = ref_audio's timbre",
    )

    @field_validator("timbre")
    @classmethod
    def _weights_are_positive(cls, timbre: dict[str, float] | None) -> dict[str, float] | None:
        if timbre is None:
            return None
        if not timbre:
            raise ValueError('name at least one clip, e.g. timbre = { "ref_audios/a.wav" = 1.0 }, or leave it out')
        bad = [f"{clip} = {weight}" for clip, weight in timbre.items() if not (math.isfinite(weight) and weight > 0)]
        if bad:
            raise ValueError(f"weights must be finite numbers > 0 (they are normalised to sum to 1): {', '.join(bad)}")
        return timbre

    def __hash__(self) -> int:  # pydantic's frozen hash fails on the timbre dict
        values = (tuple(sorted(v.items())) if isinstance(v, dict) else v for v in self.__dict__.values())
        return hash((type(self), *values))

    def model_files(self) -> list[str]:
        files = [self.gpt_model, self.sovits_model, self.ref_audio]
        return files + [clip for clip in self.timbre or () if clip not in files]

    def timbre_weights(self) -> dict[str, float]:
        """The clips the timbre is blended from, with weights that sum to 1."""
        clips = self.timbre or {self.ref_audio: 1.0}
        total = sum(clips.values())
        return {clip: weight / total for clip, weight in clips.items()}

    def with_style(self, overrides: dict[str, Any]) -> GPTSoVITSVoice:
        """A style's voice: its ref_audio/ref_text change how it speaks, not who speaks, so a style
        that changes ref_audio keeps the base voice's timbre (ref_audio's, if it has no `timbre`)."""
        base = self.model_dump(exclude_unset=True)
        new_clip = overrides.get("ref_audio", self.ref_audio) != self.ref_audio
        if new_clip and self.timbre is None and "timbre" not in overrides:
            base["timbre"] = {self.ref_audio: 1.0}
        return type(self).model_validate({**base, **overrides})

    def download_command(self, speaker_id: str) -> str | None:
        return f"python scripts/download_models.py --voices {speaker_id}"

    def at_speed(self, factor: float) -> GPTSoVITSVoice:
        # The caches key a voice by its files and reference, so a faster copy shares them.
        return self.model_copy(update={"speed_factor": min(2.0, max(0.5, self.speed_factor * factor))})


VOICE_MODEL = GPTSoVITSVoice


def voice_relative_files(voice: GPTSoVITSVoice) -> dict[str, str]:
    """The voice's files by role ("gpt", "sovits", "ref", then "timbre:<clip>" for each timbre
    clip), relative to the models dir."""
    roles = {"gpt": voice.gpt_model, "sovits": voice.sovits_model, "ref": voice.ref_audio}
    return roles | {f"timbre:{clip}": clip for clip in voice.timbre or ()}


def voice_files(voice: GPTSoVITSVoice, models_dir: Path) -> dict[str, Path]:
    """`voice_relative_files`, inside `models_dir`."""
    return {role: models_dir / relative for role, relative in voice_relative_files(voice).items()}


def missing_files_problem(voice: GPTSoVITSVoice, models_dir: Path) -> str | None:
    """Which of the voice's files are missing, timbre clips named as such; None if none is."""
    own = [voice.gpt_model, voice.sovits_model, voice.ref_audio]
    missing = [relative for relative in own if not (models_dir / relative).exists()]
    clips = [clip for clip in voice.timbre or () if clip not in own and not (models_dir / clip).exists()]
    parts = [", ".join(missing)] if missing else []
    if clips:
        parts.append(f"timbre clip{'s' if len(clips) > 1 else ''} {', '.join(clips)}")
    return f"missing {'; '.join(parts)} in the models dir" if parts else None


def voice_file_problems(voice: GPTSoVITSVoice, models_dir: Path) -> list[str]:
    """What keeps the voice's own files from being loaded, before anything reads them."""
    missing = missing_files_problem(voice, models_dir)
    problems = [missing] if missing else []
    if not voice.ref_text.strip():
        problems.append("ref_text is empty: write what ref_audio says")
    return problems


def ref_text_with_final_pause(voice: GPTSoVITSVoice) -> str:
    ref_text = voice.ref_text.strip()
    if ref_text and not ref_text.endswith(_PAUSE_END):
        ref_text += "." if voice.ref_language == "en" else "。"  # as GPT-SoVITS itself does
    return ref_text
