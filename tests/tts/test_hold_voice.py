"""`hold_voice`: engines with a voice cache keep a reply's voice loaded; the others need nothing."""

from __future__ import annotations

import contextlib

from tts.base import HoldsVoices, TTSEngine, hold_voice
from tts.scripted import ScriptedTTS, ToneVoice


class HoldingTTS(ScriptedTTS):
    def __init__(self) -> None:
        super().__init__(rtf=0)
        self.held: list[ToneVoice] = []

    @contextlib.asynccontextmanager
    async def reply_voice(self, voice):
        self.held.append(voice)
        try:
            yield
        finally:
            self.held.remove(voice)


async def test_hold_voice_uses_the_hook_when_the_engine_has_one():
    engine, voice = HoldingTTS(), ToneVoice()
    assert isinstance(engine, TTSEngine) and isinstance(engine, HoldsVoices)
    async with hold_voice(engine, voice):
        assert engine.held == [voice]
    assert engine.held == []


async def test_hold_voice_is_a_no_op_without_the_hook_or_without_a_voice():
    engine = ScriptedTTS()
    assert isinstance(engine, TTSEngine) and not isinstance(engine, HoldsVoices)
    for target, voice in [(engine, ToneVoice()), (None, None), (HoldingTTS(), None)]:
        async with hold_voice(target, voice):
            pass
