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

from chat2audio.runtime.scheduling import DeadlineExecutor
from chat2audio.runtime.threads import stream_from_thread
from tts.base import SpeechItem, TTSError, VoiceParams, WordTiming, WordTimings

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EVENT_END_OF_LIST, _EVENT_WORD, _EVENT_CLAUSE_END = 0, 1, 5
# A word's start and end are moved past the quiet samples at its edges (eSpeak reports where its
# slot begins, pauses included): a 10 ms frame quieter than this is not speech.
_QUIET = 0.01
_FRAME_S = 0.01
_WORD_EDGE = " \t\n.,;:!?…。，、；：！？\"'()“”‘’«»-—"


class _Event(ctypes.Structure):
    """`espeak_EVENT` of speak_lib.h; `sample` counts from the start of the synthesis."""

    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
        ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
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
        self._marks: list[tuple[int, int, bool]] = []  # (sample, text position, starts a word) this synthesis
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
    ) -> AsyncIterator[SpeechItem]:
        """The sentence's audio, then its words' timings, from eSpeak's word events."""
        assert isinstance(voice, EspeakVoice)

        def produce(emit: Callable[[SpeechItem], bool], cancelled: threading.Event) -> None:
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

    def _on_samples(self, samples, count: int, events) -> int:
        # Called by libespeak-ng inside espeak_Synth; returning 1 aborts the synthesis.
        index = 0
        while events and events[index].type != _EVENT_END_OF_LIST:
            event = events[index]
            if event.type in (_EVENT_WORD, _EVENT_CLAUSE_END):
                self._marks.append((event.sample, event.text_position, event.type == _EVENT_WORD))
            index += 1
        if count > 0 and samples and self._callback_target is not None:
            pcm = np.ctypeslib.as_array(samples, shape=(count,)).astype(np.float32) / 32768.0
            if not self._callback_target(pcm):
                return 1
        return 0

    def _synthesize_blocking(
        self,
        text: str,
        voice: EspeakVoice,
        emit: Callable[[SpeechItem], bool],
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
        pieces: list[np.ndarray] = []  # all of it: the words' edges are found in it

        def receive(pcm: np.ndarray) -> bool:
            if cancelled.is_set():
                return False
            pieces.append(pcm * _GAIN)
            return merge or emit(pieces[-1])

        self._callback_target, self._marks = receive, []
        try:
            encoded = text.encode("utf-8") + b"\0"
            lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self._callback_target = None
        if not pieces or cancelled.is_set():
            return
        audio = np.concatenate(pieces)
        if merge and not emit(audio):
            return
        words = word_timings(text, self._marks, audio, self._sample_rate)
        if words:
            emit(WordTimings(words))


def word_timings(
    text: str, marks: list[tuple[int, int, bool]], audio: np.ndarray, sample_rate: int
) -> tuple[WordTiming, ...]:
    """Words from eSpeak's marks (sample, 1-based character position, starts a word; the others
    end a clause): a word runs to the next mark, its text is what lies between their positions
    (punctuation trimmed), and its edges are moved past quiet audio, so a word ends where its
    sound does, not after the pause that follows it."""
    frame = max(1, round(_FRAME_S * sample_rate))
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) >= _QUIET)
    ends = [*marks[1:], (len(audio), len(text) + 1, False)]
    words = []
    for (start, position, is_word), (end, next_position, _) in zip(marks, ends):
        word = text[position - 1 : next_position - 1].strip(_WORD_EDGE)
        if not is_word or not word:
            continue
        inside = loud[(loud >= start // frame) & (loud < end // frame)]
        if inside.size:
            start, end = max(start, int(inside[0]) * frame), min(end, (int(inside[-1]) + 1) * frame)
        words.append(WordTiming(word, round(start / sample_rate, 3), round(max(start, end) / sample_rate, 3)))
    return tuple(words)
