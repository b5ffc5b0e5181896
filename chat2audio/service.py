"""The chat service: turns a validated request into a running reply pipeline.

Owns what lives for the whole process (settings, LLM backend, speaker registry, admission
control) and is kept on `app.state.service`; the HTTP layer only parses and encodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace

import anyio

from chat2audio.admission import AdmissionControl
from chat2audio.context import estimate_tokens, fit_history
from chat2audio.errors import InvalidAudio, InvalidInput, NotReady, SessionStoreUnavailable, VoiceInputUnavailable
from chat2audio.pipeline import AudioChunk, Reply, speak_reply
from chat2audio.protocol import ChatOptions
from chat2audio.sessions import MemorySessionStore, RedisSessionStore, SessionStore, TurnOrder
from chat2audio.settings import Settings
from chat2audio.speakers import Speaker, SpeakerRegistry
from chat2audio.splitter import SplitterConfig
from chat2audio.wiring import create_llm, create_stt, create_tts
from stt.base import STTBackend
from llm.base import ChatMessage, GenerationOptions, LLMBackend
from tts.base import TTSEngine, TTSError, hold_voice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceInput:
    """The user's recorded speech, transcribed once the request has been admitted."""

    audio: bytes
    filename: str | None = None


@dataclass
class PreparedReply:
    """Everything one request needs, resolved before any audio is produced."""

    speaker: Speaker
    engine: TTSEngine | None  # None: a text-only reply
    options: GenerationOptions
    sample_rate: int
    reply: Reply
    request_id: str = "-"
    user_input: str = ""  # filled from `voice` once transcribed
    voice: VoiceInput | None = None
    session_id: str | None = None
    transcript: str | None = None
    messages: list[ChatMessage] = field(default_factory=list)  # built when the turn starts


class ChatService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SpeakerRegistry.scan(settings.speakers_dir, settings.prompts_dir)
        self.llm: LLMBackend | None = None
        self.stt: STTBackend | None = None
        self.admission = AdmissionControl(
            settings.max_concurrent_requests, settings.max_queued_requests, wait_s=settings.queue_timeout_s
        )
        self.sessions: SessionStore = (
            RedisSessionStore(
                settings.redis_url, max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s,
                timeout_s=settings.session_store_timeout_s,
            )
            if settings.session_store == "redis"
            else MemorySessionStore(
                max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions
            )
        )
        self.turn_order = TurnOrder(max_waiting=settings.max_waiting_turns, wait_s=settings.queue_timeout_s)
        self.ready = False
        self.active_replies = 0
        self.load_error: str | None = None
        self.stt_error: str | None = None
        self.splitter_config = SplitterConfig()

    async def start(self) -> None:
        """Load the LLM and every engine some speaker needs. Failures are recorded, not raised:
        a broken engine makes its speakers unavailable; a broken LLM keeps /ready at 503."""
        engines: dict[str, TTSEngine] = {}
        failed: dict[str, TTSEngine] = {}  # built but not started: still able to name missing files
        problems: dict[str, str] = {}
        for name in sorted(self.registry.engine_names()):
            engine = None
            try:
                engine = create_tts(name, self.settings)
                await engine.start()
                engines[name] = engine
            except ImportError as error:
                problems[name] = f"engine {name!r} is not installed ({error.name or error})"
            except Exception as error:
                if isinstance(error, TTSError):  # an expected condition (missing models): no traceback
                    log.warning("engine %s not started: %s", name, error)
                else:
                    log.exception("engine %s failed to start", name)
                problems[name] = f"engine {name!r} failed to start: {error}"
                if engine is not None:
                    failed[name] = engine
        self.registry.attach_engines(engines, problems, self.settings.models_dir, failed=failed)
        try:
            llm = create_llm(self.settings)
            await llm.start()
            self.llm = llm
        except Exception as error:
            log.exception("LLM backend failed to start")
            self.load_error = f"LLM backend failed to start: {error}"
            return
        await self._start_stt()
        self.ready = True

    async def _start_stt(self) -> None:
        """Voice input is optional: when it fails, typed chat still works and voice requests say why."""
        try:
            stt_backend = create_stt(self.settings)
            if stt_backend is not None:
                await stt_backend.start()
            self.stt = stt_backend
        except Exception:
            log.exception("speech-to-text backend failed to start; voice input is off")
            self.stt_error = "voice input failed to start on this server; see its log"

    async def stop(self) -> None:
        self.ready = False
        if isinstance(self.sessions, RedisSessionStore):
            await self.sessions.close()
        if self.llm is not None:
            await self.llm.stop()
        if self.stt is not None:
            await self.stt.stop()
        for engine in self.registry.engines.values():
            await engine.stop()

    async def prepare(
        self, request: ChatOptions, request_id: str = "-", *, text: str | None = None, voice: VoiceInput | None = None
    ) -> PreparedReply:
        """Resolve speaker, engine and options for `text` (typed input) or `voice` (recorded)."""
        if (text is None) == (voice is None):
            raise ValueError("prepare() takes either text or voice")
        if not self.ready or self.llm is None:
            raise NotReady(self.load_error or "models are still loading; retry shortly", headers={"Retry-After": "5"})
        if voice is not None and self.stt is None:
            if self.stt_error:
                raise VoiceInputUnavailable(self.stt_error)
            raise InvalidInput("voice input is not enabled on this server (set CHAT2AUDIO_STT_BACKEND)")
        text = text or ""
        if len(text) > self.settings.max_input_chars:
            raise InvalidInput(f"input is {len(text)} characters; the limit is {self.settings.max_input_chars}")
        text_only = request.format == "text"
        speaker = self.registry.get(request.speaker, needs_voice=not text_only)
        engine = None if text_only else self.registry.engine_for(speaker)
        options = speaker.generation.apply(self.default_options())
        if request.max_new_tokens is not None:
            options = replace(options, max_new_tokens=request.max_new_tokens)
        if request.temperature is not None:
            options = replace(options, temperature=request.temperature)
        rate = engine.sample_rate(speaker.voice) if engine is not None and speaker.voice is not None else 0
        return PreparedReply(
            speaker, engine, options, rate, Reply(), request_id,
            user_input=text, voice=voice, session_id=request.session_id,
        )

    def default_options(self) -> GenerationOptions:
        s = self.settings
        return GenerationOptions(
            max_new_tokens=s.llm_max_new_tokens,
            temperature=s.llm_temperature,
            top_p=s.llm_top_p,
            repetition_penalty=s.llm_repetition_penalty,
        )

    async def reply_audio(self, prepared: PreparedReply, *, stream_first_sentence: bool) -> AsyncIterator[AudioChunk]:
        """The reply's audio. The request is counted by admission control from its first step to
        its last, waits (bounded) for its conversation's turn, then for a running slot; voice input
        is transcribed inside that slot. The turn is held until this exchange is remembered."""
        async with AsyncExitStack() as holding:
            await holding.enter_async_context(self.admission.ticket())
            if prepared.session_id:
                await holding.enter_async_context(self.turn_order.turn(prepared.speaker.id, prepared.session_id))
            await holding.enter_async_context(self.admission.running())
            if prepared.voice is not None:
                await self._transcribe(prepared)
            prepared.messages = await self._conversation(prepared)
            if prepared.engine is not None and prepared.speaker.voice is not None:
                await holding.enter_async_context(hold_voice(prepared.engine, prepared.speaker.voice))
            self.active_replies += 1
            started = time.perf_counter()
            samples = 0
            outcome = "cancelled"
            try:
                async with aclosing(self._speak(prepared, stream_first_sentence)) as chunks:
                    async for chunk in chunks:
                        samples += chunk.audio.size
                        yield chunk
                outcome = "done"
            except Exception:
                outcome = "failed"
                raise
            finally:
                self.active_replies -= 1
                if prepared.session_id:
                    await self._remember(prepared, complete=outcome == "done")
                self._log_reply(prepared, outcome, time.perf_counter() - started, samples)

    async def _transcribe(self, prepared: PreparedReply) -> None:
        assert self.stt is not None and prepared.voice is not None
        voice = prepared.voice
        transcript = (await self.stt.transcribe(voice.audio, filename=voice.filename, language=self.settings.stt_language)).strip()
        prepared.transcript = transcript
        if not transcript:
            raise InvalidAudio("speech-to-text heard no words in the audio; speak closer to the microphone and retry")
        if len(transcript) > self.settings.max_input_chars:
            raise InvalidInput(f"the transcript is {len(transcript)} characters; the limit is {self.settings.max_input_chars}")
        prepared.user_input = transcript

    async def _conversation(self, prepared: PreparedReply) -> list[ChatMessage]:
        """System prompt, the remembered turns that fit the model's context, and the new input."""
        system = [ChatMessage("system", prepared.speaker.system_prompt)] if prepared.speaker.system_prompt else []
        history: list[ChatMessage] = []
        if prepared.session_id:
            try:
                history = await self.sessions.history(prepared.speaker.id, prepared.session_id)
            except Exception:
                log.exception("request %s: session store failed to read history", prepared.request_id)
                raise SessionStoreUnavailable(
                    "the conversation memory is unavailable right now; retry, or send the request without session_id",
                    headers={"Retry-After": "5"},
                ) from None
        assert self.llm is not None
        context = self.settings.llm_context_tokens or getattr(self.llm, "context_tokens", None)
        budget = None if context is None else context - prepared.options.max_new_tokens
        counter = getattr(self.llm, "count_tokens", None) or estimate_tokens
        return fit_history(system, history, ChatMessage("user", prepared.user_input), budget=budget, count_tokens=counter)

    async def _remember(self, prepared: PreparedReply, *, complete: bool) -> None:
        """Remember the exchange; a reply cut short is remembered as far as it was spoken.

        Shielded: on a disconnect this runs while the request is being cancelled, and the store
        may need a round trip (Redis). Bounded, and a failing store is logged, never raised: the
        reply has been delivered."""
        reply = prepared.reply
        said = reply.text if complete else reply.spoken_text
        if not (said and prepared.session_id and prepared.user_input):
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.session_store_timeout_s) as timer:
            try:
                await self.sessions.remember(prepared.speaker.id, prepared.session_id, prepared.user_input, said)
            except Exception:
                log.exception("request %s: could not remember the exchange", prepared.request_id)
        if timer.cancelled_caught:
            log.warning("request %s: session store too slow; exchange not remembered", prepared.request_id)

    def _log_reply(self, prepared: PreparedReply, outcome: str, seconds: float, samples: int) -> None:
        reply = prepared.reply
        log.info(
            "reply %s speaker=%s %s first_audio=%s total=%.3fs audio=%.2fs sentences=%d finish=%s",
            prepared.request_id, prepared.speaker.id, outcome,
            f"{reply.timings.first_audio:.3f}s" if reply.timings.first_audio is not None else "-",
            seconds, samples / (prepared.sample_rate or 1), len(reply.spoken), reply.finish_reason,
        )

    def _speak(self, prepared: PreparedReply, stream_first_sentence: bool) -> AsyncIterator[AudioChunk]:
        assert self.llm is not None
        speaker = prepared.speaker
        return speak_reply(
            self.llm,
            prepared.engine,
            prepared.speaker.voice,
            prepared.messages,
            prepared.options,
            prepared.reply,
            splitter_config=self.splitter_config,
            queue_size=self.settings.sentence_queue_size,
            stream_first_sentence=stream_first_sentence and self.settings.testing.pipeline_mode == "overlapped",
            overlap=self.settings.testing.pipeline_mode == "overlapped",
            timeout_s=self.settings.request_timeout_s,
            translate=self._translator(speaker) if speaker.translates and prepared.engine is not None else None,
        )

    def _translator(self, speaker: Speaker):
        """Per-sentence translation with the same LLM, for speakers who speak another language
        than they write: the text shown stays the original, the audio is the translation."""
        assert self.llm is not None
        llm = self.llm
        system = self.settings.translation_prompt.format(source=speaker.language, target=speaker.speech_language)

        async def translate(sentence: str) -> str:
            options = GenerationOptions(max_new_tokens=4 * len(sentence) + 32, temperature=0.0, repetition_penalty=1.0)
            messages = [ChatMessage("system", system), ChatMessage("user", sentence)]
            async with aclosing(llm.stream_chat(messages, options)) as pieces:
                return "".join([piece.text async for piece in pieces])

        return translate
