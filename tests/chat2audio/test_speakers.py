"""The speaker registry: well-formed files load, broken ones are reported by file and field
without taking the others down, and lookups never touch the filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat2audio.errors import SpeakerUnavailable, UnknownSpeaker
from chat2audio.settings import PROJECT_ROOT
from chat2audio.speakers import SpeakerRegistry
from tts.scripted import ScriptedTTS

GOOD = """
engine = "scripted"
display_name = "Good"
[llm]
temperature = 0.3
[voice]
frequency_hz = 330
"""


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    speakers, prompts = tmp_path / "speakers", tmp_path / "prompts"
    write(speakers, "Good.toml", GOOD)
    write(prompts, "Good.md", "You are Good.")
    return speakers, prompts


def scan(dirs: tuple[Path, Path]) -> SpeakerRegistry:
    registry = SpeakerRegistry.scan(*dirs)
    registry.attach_engines({"scripted": ScriptedTTS()}, {}, dirs[0])
    return registry


def reason_of(registry: SpeakerRegistry, speaker_id: str) -> str:
    return next(s for s in registry.all() if s.id == speaker_id).reason or ""


def test_good_speaker_loads_with_prompt_voice_and_overrides(dirs):
    speaker = scan(dirs).get("Good")
    assert speaker.system_prompt == "You are Good."
    assert speaker.voice.frequency_hz == 330
    assert speaker.generation.temperature == 0.3


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("BadToml.toml", "engine = ", "BadToml.toml: not valid TOML"),
        ("Typo.toml", 'engine = "scripted"\nvoise = {}\n', "Typo.toml: field voise: Extra inputs are not permitted"),
        ("BadVoice.toml", 'engine = "scripted"\n[voice]\nfrequency_hz = "high"\n', "BadVoice.toml: field voice.frequency_hz"),
        ("BadRange.toml", 'engine = "scripted"\n[llm]\ntemperature = 9\n', "BadRange.toml: field llm.temperature"),
        ("NoEngine.toml", 'engine = "nope"\n', "NoEngine.toml: field engine: unknown engine 'nope'"),
        ("NoPrompt.toml", 'engine = "scripted"\nprompt = "Missing"\n', "NoPrompt.toml: field prompt: prompt file Missing.md"),
        ("EvilPrompt.toml", 'engine = "scripted"\nprompt = "../../etc/passwd"\n', "EvilPrompt.toml: field prompt"),
        ("BadStyle.toml", 'engine = "scripted"\n[styles.happy]\nfrequency_hz = -1\n', "BadStyle.toml: field styles.happy.frequency_hz"),
        ("StyleTypo.toml", 'engine = "scripted"\n[styles.happy]\nfrequenzy = 9\n', "StyleTypo.toml: field styles.happy.frequenzy"),
        ("StyleName.toml", 'engine = "scripted"\n[styles."Very Happy"]\n', "StyleName.toml: field styles.Very Happy.[key]"),
    ],
)
def test_broken_file_is_reported_by_file_and_field_and_spares_the_others(dirs, name, text, expected):
    write(dirs[0], name, text)
    write(dirs[1], Path(name).stem + ".md", "prompt")
    registry = scan(dirs)
    assert expected in reason_of(registry, Path(name).stem)
    with pytest.raises(SpeakerUnavailable, match=Path(name).stem):
        registry.get(Path(name).stem)
    assert registry.get("Good").available


def test_styles_are_the_voice_with_their_own_fields_over_it(dirs):
    write(dirs[0], "Moody.toml", GOOD.replace("[voice]", "[styles.high]\nfrequency_hz = 660\n[styles.soft]\namplitude = 0.1\n[voice]"))
    write(dirs[1], "Moody.md", "You are Moody.")
    speaker = scan(dirs).get("Moody")
    assert list(speaker.styles) == ["high", "soft"]
    assert (speaker.styles["high"].frequency_hz, speaker.styles["high"].amplitude) == (660, speaker.voice.amplitude)
    assert (speaker.styles["soft"].frequency_hz, speaker.styles["soft"].amplitude) == (330, 0.1)
    assert speaker.voice_in(None) is speaker.voice and speaker.voice_in("soft") is speaker.styles["soft"]


def test_engine_problems_and_missing_files_make_speakers_unavailable(dirs):
    registry = SpeakerRegistry.scan(*dirs)
    registry.attach_engines({}, {"scripted": "engine 'scripted' is not installed"}, dirs[0])
    assert reason_of(registry, "Good") == "engine 'scripted' is not installed"


class VoiceTroubleTTS(ScriptedTTS):
    """A scripted engine whose verdict on voices can change while the service runs."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.checks = 0

    def check_voice(self, voice, models_dir):
        self.checks += 1
        return list(self.problems)


def test_voice_problems_found_after_start_up_show_in_lookups_and_clear_when_fixed(dirs):
    write(dirs[0], "BadVoice.toml", 'engine = "scripted"\n[voice]\nfrequency_hz = "high"\n')
    write(dirs[1], "BadVoice.md", "prompt")
    registry = SpeakerRegistry.scan(*dirs)
    engine = VoiceTroubleTTS()
    registry.attach_engines({"scripted": engine}, {}, dirs[0])
    assert registry.get("Good").available

    engine.problems = ["voice file x.ckpt could not be loaded (not a checkpoint)"]  # failed at request time
    with pytest.raises(SpeakerUnavailable, match=r"could not be loaded \(not a checkpoint\)"):
        registry.get("Good")
    assert reason_of(registry, "Good") == "voice file x.ckpt could not be loaded (not a checkpoint)"
    assert registry.get("Good", needs_voice=False).can_chat  # text-only replies still work

    engine.problems = []  # the file was fixed
    assert registry.get("Good").available and reason_of(registry, "Good") == ""
    assert "BadVoice.toml: field voice.frequency_hz" in reason_of(registry, "BadVoice")  # parse problems stay


def test_speakers_of_engines_that_did_not_start_are_not_rechecked(dirs):
    registry = SpeakerRegistry.scan(*dirs)
    engine = VoiceTroubleTTS()
    problems = {"scripted": "engine 'scripted' failed to start: boom"}
    registry.attach_engines({}, problems, dirs[0], failed={"scripted": engine})
    checks = engine.checks
    assert reason_of(registry, "Good") == "engine 'scripted' failed to start: boom"
    with pytest.raises(SpeakerUnavailable):
        registry.get("Good")
    assert engine.checks == checks


def test_unknown_speaker_lists_the_known_ones(dirs):
    write(dirs[0], "Other.toml", GOOD)
    write(dirs[1], "Other.md", "You are Other.")
    registry = scan(dirs)
    for requested in ("Nobody", "../Good", "/etc/passwd", "Good\x00", "Ｇood"):
        with pytest.raises(UnknownSpeaker) as raised:
            registry.get(requested)
        assert "known speakers: Good, Other" in raised.value.message


def test_files_with_unsafe_names_are_ignored(dirs):
    write(dirs[0], "bad name.toml", GOOD)
    assert [s.id for s in scan(dirs).all()] == ["Good"]


def test_shipped_speakers_all_parse():
    registry = SpeakerRegistry.scan(PROJECT_ROOT / "speakers", PROJECT_ROOT / "prompts")
    speakers = {s.id: s for s in registry.all()}
    assert {"Aria", "Firefly", "Klee", "Ayaka", "Nahida", "Tribbie", "Yoimiya", "Citlali"} <= set(speakers)
    for speaker in speakers.values():
        assert speaker.voice is not None, speaker.reason
        assert speaker.system_prompt
