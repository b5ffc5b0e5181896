"""The `[voice]` table of a GPT-SoVITS speaker and the checks on its files.

Light on purpose: the speaker registry imports `VOICE_MODEL` to validate speaker files.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

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

    def download_command(self, speaker_id: str) -> str | None:
        return f"python scripts/download_models.py --voices {speaker_id}"

    def at_speed(self, factor: float) -> GPTSoVITSVoice:
        # The caches key a voice by its files and reference, so a faster copy shares them.
        return self.model_copy(update={"speed_factor": min(2.0, max(0.5, self.speed_factor * factor))})


VOICE_MODEL = GPTSoVITSVoice


def voice_files(voice: GPTSoVITSVoice, models_dir: Path) -> dict[str, Path]:
    """The voice's files by role ("gpt", "sovits", "ref"), inside `models_dir`."""
    return {name: models_dir / relative for name, relative in zip(("gpt", "sovits", "ref"), voice.model_files())}


def voice_file_problems(voice: GPTSoVITSVoice, models_dir: Path) -> list[str]:
    """What keeps the voice's own files from being loaded, before anything reads them."""
    missing = [relative for relative in voice.model_files() if not (models_dir / relative).exists()]
    problems = [f"missing {', '.join(missing)} in the models dir"] if missing else []
    if not voice.ref_text.strip():
        problems.append("ref_text is empty: write what ref_audio says")
    return problems


def ref_text_with_final_pause(voice: GPTSoVITSVoice) -> str:
    ref_text = voice.ref_text.strip()
    if ref_text and not ref_text.endswith(_PAUSE_END):
        ref_text += "." if voice.ref_language == "en" else "。"  # as GPT-SoVITS itself does
    return ref_text
