"""The chat service: turns a validated request into a running reply pipeline.

Owns what lives for the whole process (settings, LLM backend, speaker registry, admission
control) and is kept on `app.state.service`; the HTTP layer only parses and encodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, replace

import tts
from chat2audio.errors import InvalidInput, NotReady, Overloaded
from chat2audio.pipeline import AudioChunk, Reply, speak_reply
from chat2audio.protocol import ChatRequest
from chat2audio.sessions import MemorySessionStore, RedisSessionStore, SessionStore, TurnOrder
from chat2audio.settings import Settings
from chat2audio.speakers import Speaker, SpeakerRegistry
from chat2audio.splitter import SplitterConfig
from llm import create_backend
from stt import create_backend as create_stt_backend
from stt.base import STTBackend
from llm.base import ChatMessage, GenerationOptions, LLMBackend
from tts.base import TTSEngine, TTSError

log = logging.getLogger(__name__)


@dataclass
class PreparedReply:
    """Everything one request needs, resolved before any audio is produced."""

    speaker: Speaker
    engine: TTSEngine | None  # None: a text-only reply
    messages: list[ChatMessage]
    options: GenerationOptions
    sample_rate: int
    reply: Reply
    request_id: str = "-"
    user_input: str = ""
    session_id: str | None = None


class AdmissionControl:
    """At most `limit` replies run at once and `queue` wait; anyone beyond is turned away at once."""

    def __init__(self, limit: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._capacity = limit + queue
        self.admitted = 0  # running + waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.admitted >= self._capacity:
            raise Overloaded("server is at capacity; retry shortly", headers={"Retry-After": "2"})
        self.admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self.admitted -= 1


class ChatService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SpeakerRegistry.scan(settings.speakers_dir, settings.prompts_dir)
        self.llm: LLMBackend | None = None
        self.stt: STTBackend | None = None
        self.admission = AdmissionControl(settings.max_concurrent_requests, settings.max_queued_requests)
        self.sessions: SessionStore = (
            RedisSessionStore(settings.redis_url, max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s)
            if settings.session_store == "redis"
            else MemorySessionStore(
                max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions
            )
        )
        self.turn_order = TurnOrder()
        self.ready = False
        self.active_replies = 0
        self.load_error: str | None = None
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
                engine = tts.create_engine(name, self.settings)
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
            llm = create_backend(self.settings)
            await llm.start()
            self.llm = llm
            stt_backend = create_stt_backend(self.settings)
            if stt_backend is not None:
                await stt_backend.start()
            self.stt = stt_backend
        except Exception as error:
            log.exception("model backends failed to start")
            self.load_error = f"backend failed to start: {error}"
            return
        self.ready = True

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

    async def prepare(self, request: ChatRequest, request_id: str = "-") -> PreparedReply:
        if not self.ready or self.llm is None:
            raise NotReady(self.load_error or "models are still loading; retry shortly", headers={"Retry-After": "5"})
        if len(request.input) > self.settings.max_input_chars:
            raise InvalidInput(
                f"input is {len(request.input)} characters; the limit is {self.settings.max_input_chars}"
            )
        text_only = request.format == "text"
        speaker = self.registry.get(request.speaker, needs_voice=not text_only)
        engine = None if text_only else self.registry.engine_for(speaker)
        options = speaker.generation.apply(self.default_options())
        if request.max_new_tokens is not None:
            options = replace(options, max_new_tokens=request.max_new_tokens)
        if request.temperature is not None:
            options = replace(options, temperature=request.temperature)
        messages = [ChatMessage("user", request.input)]  # a session's history joins when its turn comes
        if speaker.system_prompt:
            messages.insert(0, ChatMessage("system", speaker.system_prompt))
        rate = engine.sample_rate(speaker.voice) if engine is not None and speaker.voice is not None else 0
        return PreparedReply(
            speaker, engine, messages, options, rate, Reply(), request_id,
            user_input=request.input, session_id=request.session_id,
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
        """The reply's audio, holding an admission slot from the first step to the last and, in a
        session, the conversation's turn from reading its history to remembering this exchange."""
        async with AsyncExitStack() as holding:
            if prepared.session_id:
                await holding.enter_async_context(self.turn_order.turn(prepared.speaker.id, prepared.session_id))
                history = await self.sessions.history(prepared.speaker.id, prepared.session_id)
                *system, user = prepared.messages
                prepared.messages = [*system, *history, user]
            await holding.enter_async_context(self.admission.slot())
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
                reply = prepared.reply
                if prepared.session_id:
                    await self._remember(prepared, complete=outcome == "done")
                log.info(
                    "reply %s speaker=%s %s first_audio=%s total=%.3fs audio=%.2fs sentences=%d finish=%s",
                    prepared.request_id, prepared.speaker.id, outcome,
                    f"{reply.timings.first_audio:.3f}s" if reply.timings.first_audio is not None else "-",
                    time.perf_counter() - started, samples / (prepared.sample_rate or 1), len(reply.spoken),
                    reply.finish_reason,
                )

    async def _remember(self, prepared: PreparedReply, *, complete: bool) -> None:
        """Remember the exchange; a reply cut short is remembered as far as it was spoken."""
        reply = prepared.reply
        said = reply.text if complete else reply.spoken_text
        if said and prepared.session_id:
            await self.sessions.remember(prepared.speaker.id, prepared.session_id, prepared.user_input, said)

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
            stream_first_sentence=stream_first_sentence and self.settings.pipeline_mode == "overlapped",
            overlap=self.settings.pipeline_mode == "overlapped",
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
