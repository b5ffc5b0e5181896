"""TTS engines, one module each behind one small interface (`tts.base.TTSEngine`); the `engine`
field of a speaker file names one of them (see `chat2audio.wiring`)."""

from tts.base import TTSEngine, TTSError, VoiceParams

__all__ = ["TTSEngine", "TTSError", "VoiceParams"]
