"""eSpeak NG, the embedded default voice: bundled by the `espeakng-loader` wheel, no downloads.

libespeak-ng keeps process-global state (current voice, parameters, one callback), so every
synthesis in the process runs on one dedicated worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from tts.base import TTSError, VoiceParams
from chat2audio.runtime.scheduling import DeadlineExecutor
from chat2audio.runtime.threads import stream_from_thread

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
# espeak renders close to full scale; leave headroom so encoded audio never clips.
_GAIN = 0.8


class EspeakVoice(VoiceParams):
    """`[voice]` table of an espeak speaker."""

    voice: str = Field("en-us", pattern=r"^[A-Za-z0-9_+\-]+$", description='espeak voice, e.g. "en-us+f3", "cmn"')
    rate: int = Field(165, ge=80, le=450, description="words per minute")
    pitch: int = Field(50, ge=0, le=99)
    pitch_range: int = Field(50, ge=0, le=99)

    def at_speed(self, factor: float) -> EspeakVoice:
        return self.model_copy(update={"rate": round(min(450, max(80, self.rate * factor)))})


VOICE_MODEL = EspeakVoice


class EspeakEngine:
    """Synthesizes with libespeak-ng on one worker thread (the library is not thread-safe)."""

    name: ClassVar[str] = "espeak"
    voice_model: ClassVar[type[VoiceParams]] = EspeakVoice

    def __init__(self, *, library_path: str, data_path: str) -> None:
        self._library_path = library_path
        self._data_path = data_path
        self._lib: ctypes.CDLL | None = None
        self._sample_rate = 22050
        self._known_voices: set[str] | None = None
        # A single thread: libespeak-ng's state belongs to whoever calls it, one caller at a time.
        self._worker = DeadlineExecutor("espeak")  # one synthesis at a time, most urgent first
        self._callback_target: Callable[[np.ndarray], bool] | None = None
        self._c_callback = _SYNTH_CALLBACK(self._on_samples)  # kept alive as long as the engine

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._initialize)

    async def stop(self) -> None:
        # A synthesis in progress finishes on its thread; the event loop does not wait for it.
        await asyncio.to_thread(self._worker.shutdown, wait=True, cancel_futures=True)

    def sample_rate(self, voice: VoiceParams) -> int:
        return self._sample_rate

    def check_voice(self, voice: VoiceParams, models_dir: Path) -> list[str]:
        assert isinstance(voice, EspeakVoice)
        language, _, variant = voice.voice.partition("+")
        problems = [] if self._voice_exists(language) else [f"espeak has no language voice {language!r}"]
        if variant and not self._voice_exists(variant):
            problems.append(f"espeak has no voice variant {variant!r}")
        return problems

    def synthesize(
        self, text: str, voice: VoiceParams, *, streaming: bool = False
    ) -> AsyncIterator[np.ndarray]:
        assert isinstance(voice, EspeakVoice)

        def produce(emit: Callable[[np.ndarray], bool], cancelled: threading.Event) -> None:
            self._synthesize_blocking(text, voice, emit, cancelled, merge=not streaming)

        return stream_from_thread(produce, executor=self._worker)

    # -- worker thread only ----------------------------------------------------------------

    def _initialize(self) -> None:
        lib = ctypes.CDLL(self._library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        # The path argument is the folder that *contains* espeak-ng-data.
        parent = str(Path(self._data_path).parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, parent, 0)
        if rate <= 0:
            raise TTSError(f"libespeak-ng failed to initialize (data at {self._data_path})", status=503)
        lib.espeak_SetSynthCallback(self._c_callback)
        self._sample_rate = rate
        self._lib = lib

    def _voice_exists(self, name: str) -> bool:
        if self._known_voices is None:
            data = Path(self._data_path)
            files = [*(data / "lang").rglob("*"), *(data / "voices" / "!v").glob("*")]
            self._known_voices = {path.name.lower() for path in files if path.is_file()}
        return name.lower() in self._known_voices

    def _on_samples(self, samples, count: int, _events) -> int:
        # Called by libespeak-ng inside espeak_Synth; returning 1 aborts the synthesis.
        if count > 0 and samples and self._callback_target is not None:
            pcm = np.ctypeslib.as_array(samples, shape=(count,)).astype(np.float32) / 32768.0
            if not self._callback_target(pcm):
                return 1
        return 0

    def _synthesize_blocking(
        self,
        text: str,
        voice: EspeakVoice,
        emit: Callable[[np.ndarray], bool],
        cancelled: threading.Event,
        *,
        merge: bool,
    ) -> None:
        lib = self._lib
        if lib is None:
            raise TTSError("espeak engine not started", status=503)
        if lib.espeak_SetVoiceByName(voice.voice.encode()) != 0:
            raise TTSError(f"espeak could not select voice {voice.voice!r}", status=503)
        lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        pieces: list[np.ndarray] = []

        def receive(pcm: np.ndarray) -> bool:
            if cancelled.is_set():
                return False
            if merge:
                pieces.append(pcm * _GAIN)
                return True
            return emit(pcm * _GAIN)

        self._callback_target = receive
        try:
            encoded = text.encode("utf-8") + b"\0"
            lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self._callback_target = None
        if merge and pieces and not cancelled.is_set():
            emit(np.concatenate(pieces))
