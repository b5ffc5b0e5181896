"""The chat service: a validated request in, the reply's events out.

Owns what lives for the whole process (settings, engines, speaker registry, conversations,
admission control) and is kept on `app.state.service`; the HTTP layer only parses and encodes.
It raises domain errors (`chat2audio.errors`) and engine errors, and knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from typing import Union

from chat2audio.admission import AdmissionControl
from chat2audio.baselines import reply_pipeline
from chat2audio.context import TokenCounter, estimate_tokens, fit_history
from chat2audio.conversation import Conversations
from chat2audio.errors import InvalidAudio, InvalidInput, NotReady, UnknownStyle, VoiceInputUnavailable
from chat2audio.metrics import LiveCounts, Metrics
from chat2audio.pipeline import ReplyFinished, ReplyItem, SentenceDone, Staging, join_sentences
from chat2audio.protocol.chat import ChatOptions
from chat2audio.runtime.text import is_speakable
from chat2audio.sessions import MemorySessionStore, RedisSessionStore, SessionStore, TurnOrder
from chat2audio.settings import Settings, generation_defaults
from chat2audio.speakers import Speaker, SpeakerRegistry
from chat2audio.splitter import SplitterConfig, speakable_text
from chat2audio.startup import start_llm, start_stt, start_tts_engines, startup_summary
from llm.base import ChatMessage, CountsGenerations, CountsTokens, GenerationOptions, LLMBackend, ReplyWriter
from llm.verbatim import VerbatimText
from stt.base import STTBackend
from tts.base import TTSEngine, VoiceParams, hold_voice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceInput:
    """The user's recorded speech, transcribed once the request has been admitted."""

    audio: bytes
    filename: str | None = None


@dataclass(frozen=True)
class ReplyStarted:
    """The first item of a reply: admitted, input understood, about to speak."""

    request_id: str
    speaker: str
    sample_rate: int  # 0 for text-only replies
    session_id: str | None
    transcript: str | None  # what was heard, for voice input


ReplyEvent = Union[ReplyStarted, ReplyItem]


@dataclass(frozen=True)
class Caller:
    """Who asked for a reply, built once per request: its id (for the log), its route (the
    time-to-first-audio histogram's label), when it arrived (first audio is measured from
    then), and whether each sentence streams as it is synthesized (the stream app)."""

    request_id: str = "-"
    endpoint: str = "-"
    arrived: float = field(default_factory=time.perf_counter)
    streaming: bool = True


@dataclass
class _Turn:
    """One reply's resolved request, filled in as it goes (private to the service)."""

    caller: Caller
    speaker: Speaker
    engine: TTSEngine | None  # None: a text-only reply
    options: GenerationOptions
    session_id: str | None
    user_input: str
    voice: VoiceInput | None
    transcript: str | None = None
    style: str | None = None  # the request pinned the whole reply to this style

    def styles(self) -> dict[str, VoiceParams]:
        """The styles the reply's tags may switch to: none when the request pinned one."""
        return {} if self.style else self.speaker.styles

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate(self.speaker.voice) if self.engine and self.speaker.voice else 0


class ChatService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SpeakerRegistry.scan(settings.speakers_dir, settings.prompts_dir)
        self.llm: LLMBackend | None = None
        self.stt: STTBackend | None = None
        self.admission = AdmissionControl(
            settings.max_concurrent_requests, settings.max_queued_requests, wait_s=settings.queue_timeout_s
        )
        self.conversations = Conversations(
            _session_store(settings),
            TurnOrder(max_waiting=settings.max_waiting_turns, wait_s=settings.queue_timeout_s),
            store_timeout_s=settings.session_store_timeout_s,
        )
        self.ready = False
        self.voices_ready = False
        self.active_replies = 0
        self.load_error: str | None = None
        self.stt_error: str | None = None
        self.splitter_config = SplitterConfig()
        self._reply_pipeline = reply_pipeline(settings.testing)
        self.metrics = Metrics(self._live_counts)
        # Prompts are fitted (tokenized) off the event loop, one at a time: a tokenizer is
        # blocking work, and a fast tokenizer used from two threads at once fails.
        self._prompt_fitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fit-prompt")

    def _live_counts(self) -> LiveCounts:
        running = self.admission.running_now
        tokens = self.llm.tokens_generated if isinstance(self.llm, CountsGenerations) else 0
        return LiveCounts(self.admission.admitted - running, running, self.admission.rejected, tokens)

    @property
    def sessions(self) -> SessionStore:
        return self.conversations.store

    @property
    def turn_order(self) -> TurnOrder:
        return self.conversations.turn_order

    async def start(self) -> None:
        """Load every engine some speaker needs, the LLM and, if configured, speech-to-text;
        then log one summary of what runs and what does not."""
        started = time.perf_counter()
        engine_states = await start_tts_engines(self.registry, self.settings)
        self.voices_ready = True  # speech requests need no LLM: they may start now
        self.llm, self.load_error = await start_llm(self.settings)
        if self.llm is not None:
            self.stt, self.stt_error = await start_stt(self.settings)
            self.ready = True
        summary = startup_summary(
            self.settings, seconds=time.perf_counter() - started, llm=self.llm, llm_error=self.load_error,
            engine_states=engine_states, speakers=self.registry.all(), stt=self.stt, stt_error=self.stt_error,
        )
        (log.info if self.ready else log.error)("%s", summary)

    async def stop(self) -> None:
        self.ready = False
        await self.sessions.close()
        for backend in (self.llm, self.stt, *self.registry.engines.values()):
            if backend is not None:
                await backend.stop()
        await asyncio.to_thread(self._prompt_fitter.shutdown, wait=True, cancel_futures=True)

    async def reply(
        self,
        request: ChatOptions,
        *,
        text: str | None = None,
        voice: VoiceInput | None = None,
        caller: Caller = Caller(),
    ) -> AsyncIterator[ReplyEvent]:
        """ReplyStarted, the reply's audio chunks, then ReplyFinished, for `text` (typed) or
        `voice` (recorded). Bad requests fail at the first step, before anything is waited for.

        The request is counted by admission control from its first step to its last, waits
        (bounded) for its conversation's turn, then for a running slot; voice input is
        transcribed inside that slot. The turn is held until the exchange is remembered."""
        turn = self._resolve(request, text, voice, caller)
        async with AsyncExitStack() as holding:
            await holding.enter_async_context(self.admission.ticket())
            await holding.enter_async_context(self.conversations.turn(turn.speaker.id, turn.session_id))
            await holding.enter_async_context(self.admission.running())
            if turn.voice is not None:
                await self._transcribe(turn)
            messages = await self._messages(turn)
            async with aclosing(self._started(turn, holding, messages)) as events:
                async for event in events:
                    yield event

    async def reply_to_messages(
        self, request: ChatOptions, messages: list[ChatMessage], *, caller: Caller = Caller()
    ) -> AsyncIterator[ReplyEvent]:
        """A reply to a conversation the client keeps itself (OpenAI's chat completions are
        stateless): the speaker's role prompt leads, then the client's own system messages, then
        as much of its history as fits the context, then its last message, which must be the user's."""
        if not messages or messages[-1].role != "user":
            raise InvalidInput("messages must end with the user's message")
        self._check_messages(messages)
        turn = self._resolve(request, messages[-1].content, None, caller)
        async with AsyncExitStack() as holding:
            await holding.enter_async_context(self.admission.ticket())
            await holding.enter_async_context(self.admission.running())
            own_system = [m for m in messages[:-1] if m.role == "system"]
            history = [m for m in messages[:-1] if m.role != "system"]
            prompt = await self._fitted(turn, self._role_prompt(turn) + own_system, history, messages[-1])
            async with aclosing(self._started(turn, holding, prompt)) as events:
                async for event in events:
                    yield event

    async def speak_text(
        self, speaker_id: str, text: str, *, caller: Caller = Caller(), speed: float = 1.0,
        voice: VoiceParams | None = None,
    ) -> AsyncIterator[ReplyEvent]:
        """ReplyStarted, then `text` itself spoken in the speaker's voice: no LLM, no translation,
        but the same admission, sentence splitting and synthesis as a reply, the first sentence
        streamed. `speed` scales the voice's own speed where its engine allows; `voice` replaces
        the speaker's voice settings for this request (same engine, e.g. other sampling)."""
        if not self.voices_ready:
            raise NotReady("voices are still loading; retry shortly", headers={"Retry-After": "5"})
        if not text.strip():
            raise InvalidInput("input is empty: give the text to speak", param="input")
        self._check_length(text, "input")
        if not await asyncio.to_thread(_has_speech, text):  # the whole text filtered: off the loop
            raise InvalidInput(
                "input has nothing to speak: no letters or digits once emoji, invisible characters, markup "
                "and stage directions are left out", param="input",
            )
        speaker = self.registry.get(speaker_id)
        assert speaker.voice is not None
        # Style tags in the text switch styles, unless the request brought its own voice settings.
        styles = {} if voice is not None else speaker.styles
        voice = voice or speaker.voice
        if speed != 1.0:
            voice, styles = voice.at_speed(speed), {name: style.at_speed(speed) for name, style in styles.items()}
        speaker = replace(speaker, voice=voice, styles=styles)
        turn = _Turn(caller, speaker, self.registry.engine_for(speaker), GenerationOptions(), None, text, None)
        async with AsyncExitStack() as holding:
            await holding.enter_async_context(self.admission.ticket())
            await holding.enter_async_context(self.admission.running())
            async with aclosing(self._started(turn, holding, [], llm=VerbatimText(text))) as events:
                async for event in events:
                    yield event

    async def _started(
        self, turn: _Turn, holding: AsyncExitStack, messages: list[ChatMessage], *, llm: ReplyWriter | None = None,
    ) -> AsyncIterator[ReplyEvent]:
        """An admitted turn from ReplyStarted on: its voice held (in `holding`) for the whole
        reply, then the pipeline's items."""
        for voice in turn.speaker.voices() if turn.engine is not None else []:
            await holding.enter_async_context(hold_voice(turn.engine, voice))
        yield ReplyStarted(turn.caller.request_id, turn.speaker.id, turn.sample_rate, turn.session_id, turn.transcript)
        async with aclosing(self._speak(turn, messages, llm=llm)) as items:
            async for item in items:
                yield item

    def _resolve(self, request: ChatOptions, text: str | None, voice: VoiceInput | None, caller: Caller) -> _Turn:
        if (text is None) == (voice is None):
            raise ValueError("reply() takes either text or voice")
        if not self.ready or self.llm is None:
            raise NotReady(self.load_error or "models are still loading; retry shortly", headers={"Retry-After": "5"})
        if voice is not None and self.stt is None:
            if self.stt_error:
                raise VoiceInputUnavailable(self.stt_error)
            raise InvalidInput("voice input is not enabled on this server (set CHAT2AUDIO_STT_BACKEND)")
        self._check_length(text or "", "input")
        text_only = request.format == "text"
        speaker = self.registry.get(request.speaker, needs_voice=not text_only)
        engine = None if text_only else self.registry.engine_for(speaker)
        options = speaker.generation.apply(generation_defaults(self.settings))
        overrides = {
            name: value for name in ("max_new_tokens", "temperature", "top_p", "seed")
            if (value := getattr(request, name)) is not None
        }
        if request.stop:
            overrides["stop"] = tuple(request.stop)
        options = replace(options, **overrides)
        if request.style is not None and request.style not in speaker.styles:
            known = ", ".join(speaker.styles) or "none"
            raise UnknownStyle(f"speaker {speaker.id!r} has no style {request.style!r} (its styles: {known})", param="style")
        return _Turn(caller, speaker, engine, options, request.session_id, text or "", voice, style=request.style)

    def _check_messages(self, messages: list[ChatMessage]) -> None:
        """A client-kept conversation within the limits: at most `max_messages` messages, each
        at most `max_input_chars` long (checked before any of it is tokenized)."""
        if len(messages) > self.settings.max_messages:
            raise InvalidInput(
                f"messages has {len(messages)} entries; the limit is {self.settings.max_messages} "
                "(CHAT2AUDIO_MAX_MESSAGES): send the newest ones", param="messages",
            )
        for index, message in enumerate(messages):
            if len(message.content) > self.settings.max_input_chars:
                raise InvalidInput(
                    f"messages[{index}] is {len(message.content)} characters; the limit is {self.settings.max_input_chars}",
                    param=f"messages[{index}].content",
                )

    def _check_length(self, text: str, what: str) -> None:
        if len(text) > self.settings.max_input_chars:
            raise InvalidInput(
                f"{what} is {len(text)} characters; the limit is {self.settings.max_input_chars} (CHAT2AUDIO_MAX_INPUT_CHARS)",
                param="input",
            )

    async def _transcribe(self, turn: _Turn) -> None:
        assert self.stt is not None and turn.voice is not None
        heard = await self.stt.transcribe(turn.voice.audio, filename=turn.voice.filename, language=self.settings.stt_language)
        turn.transcript = heard.strip()
        if not turn.transcript:
            raise InvalidAudio("speech-to-text heard no words in the audio; speak closer to the microphone and retry")
        self._check_length(turn.transcript, "the transcript")
        turn.user_input = turn.transcript

    async def _messages(self, turn: _Turn) -> list[ChatMessage]:
        history = await self.conversations.history(turn.speaker.id, turn.session_id) if turn.session_id else []
        return await self._fitted(turn, self._role_prompt(turn), history, ChatMessage("user", turn.user_input))

    async def _fitted(
        self, turn: _Turn, system: list[ChatMessage], history: list[ChatMessage], user: ChatMessage
    ) -> list[ChatMessage]:
        """The prompt: as much of `history` as fits the context, counted on the fitting thread."""
        budget, count_tokens, exact = self._prompt_budget(turn)
        fit = functools.partial(
            fit_history, system, history, user, budget=budget, count_tokens=count_tokens, exact=exact
        )
        return await asyncio.get_running_loop().run_in_executor(self._prompt_fitter, fit)

    def _role_prompt(self, turn: _Turn) -> list[ChatMessage]:
        """The speaker's persona, told the style tags it may use (none when the request pinned one)."""
        styles = turn.styles() if turn.engine is not None else {}
        prompt = turn.speaker.role_prompt(self.settings.style_prompt, styles)
        return [ChatMessage("system", prompt)] if prompt else []

    def _prompt_budget(self, turn: _Turn) -> tuple[int | None, TokenCounter, bool]:
        """Tokens the prompt may take (the context less the reply's room; None: unknown), how to
        count them (the model's own tokenizer where it has one), and whether that count is exact
        (False: an upper bound)."""
        counting = self.llm if isinstance(self.llm, CountsTokens) else None
        context = self.settings.llm_context_tokens or (counting.context_tokens if counting else None)
        budget = None if context is None else context - turn.options.max_new_tokens
        if counting is None:
            return budget, estimate_tokens, True
        return budget, counting.count_tokens, counting.counts_exactly

    async def _speak(
        self, turn: _Turn, messages: list[ChatMessage], *, llm: ReplyWriter | None = None
    ) -> AsyncIterator[ReplyItem]:
        """The pipeline's items, counted, logged, and remembered in the conversation at the end
        (a reply cut short as far as it was spoken). The one place a reply's first audio is
        timed, from the request's arrival. With `llm` (speech requests: the text itself)
        instead of the service's model, nothing is translated."""
        writer = llm or self.llm
        assert writer is not None
        translates = turn.speaker.translates and turn.engine is not None and llm is None
        staging = Staging(
            self.splitter_config, self.settings.sentence_queue_size, self.settings.request_timeout_s,
            stream_sentences=turn.caller.streaming,
        )
        pipeline = self._reply_pipeline(
            writer, turn.engine, turn.speaker.voice_in(turn.style), messages, turn.options, staging,
            translate=self._translator(turn.speaker) if translates else None, styles=turn.styles(), style=turn.style,
        )
        started, first_audio, samples = time.perf_counter(), None, 0
        spoken: list[str] = []
        finished: ReplyFinished | None = None
        self.active_replies += 1
        try:
            async with aclosing(pipeline) as items:
                async for item in items:
                    if isinstance(item, ReplyFinished):
                        finished = item
                    elif isinstance(item, SentenceDone):
                        spoken.append(item.text)
                    else:
                        if first_audio is None:
                            first_audio = time.perf_counter() - turn.caller.arrived
                            self.metrics.time_to_first_audio.labels(turn.caller.endpoint).observe(first_audio)
                        samples += item.audio.size
                    yield item
        finally:
            self.active_replies -= 1
            self._measure(turn, samples, time.perf_counter() - started, complete=finished is not None)
            said = finished.text if finished else join_sentences(spoken)
            if turn.session_id and said:
                await self.conversations.remember(turn.speaker.id, turn.session_id, turn.user_input, said)
            log.info(
                "reply %s speaker=%s %s first_audio=%s total=%.3fs audio=%.2fs sentences=%d finish=%s",
                turn.caller.request_id, turn.speaker.id, "done" if finished else "stopped",
                f"{first_audio:.3f}s" if first_audio is not None else "-", time.perf_counter() - started,
                samples / (turn.sample_rate or 1), len(spoken), finished.finish_reason if finished else "-",
            )

    def _measure(self, turn: _Turn, samples: int, seconds: float, *, complete: bool) -> None:
        """Audio made, per engine, and (for a reply heard to its end) how fast it was made."""
        if turn.engine is None or not samples or not turn.sample_rate:
            return
        audio_s = samples / turn.sample_rate
        self.metrics.tts_audio_seconds.labels(turn.engine.name).inc(audio_s)
        if complete:
            self.metrics.real_time_factor.labels(turn.engine.name).observe(seconds / audio_s)

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


def _has_speech(text: str) -> bool:
    """Whether anything of `text` would be spoken (not only emoji, markup, invisible characters)."""
    return is_speakable(speakable_text(text))


def _session_store(settings: Settings) -> SessionStore:
    if settings.session_store == "redis":
        return RedisSessionStore(
            settings.redis_url, max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s,
            timeout_s=settings.session_store_timeout_s,
        )
    return MemorySessionStore(
        max_turns=settings.session_max_turns, ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions
    )
