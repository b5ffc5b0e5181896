"""Speech-to-text backends, one module each behind one small interface (`stt.base.STTBackend`);
which name means which backend is decided in `chat2audio.wiring`."""

from stt.base import STTBackend, STTError, audio_duration, decode_audio

__all__ = ["STTBackend", "STTError", "audio_duration", "decode_audio"]
