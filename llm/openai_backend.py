"""LLM backend `openai`: streams replies from a remote OpenAI-compatible server (vLLM, SGLang,
llama.cpp, Ollama) through the official `openai` SDK's streamed chat completions, and learns the
server's context window so that a conversation is trimmed to what the server accepts."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

from chat2audio.runtime.upstream import UpstreamClient, scrub
from llm.base import ChatMessage, FinishReason, GenerationOptions, LLMError, TextPiece, chat_template_ids

log = logging.getLogger(__name__)

Stream = openai.AsyncStream[ChatCompletionChunk]

# The window when neither the setting nor the server says (the README's `--max-model-len 4096`).
DEFAULT_CONTEXT_TOKENS = 4096
# The upper-bound estimate, where no tokenizer of the served model is at hand: byte-level BPE
# (Llama 3, Qwen, SmolLM2, GPT) and SentencePiece with byte fallback (Llama 2, Mistral) never
# spend less than one UTF-8 byte on a token, so counting bytes never under-counts, whatever the
# script (a Chinese character is 3 bytes, and up to 3 tokens where the vocabulary lacks it).
# English is over-counted ~4x: less history is kept, but no turn is ever refused for it.
ESTIMATE_PER_MESSAGE_TOKENS = 8  # a chat template's role markers and separators
ESTIMATE_TEMPLATE_TOKENS = 64  # its fixed text: BOS, generation prompt, a default system prompt
# A server still starting when we did (a 7B vLLM loads for minutes) is asked again, this often.
REDISCOVER_EVERY_S = 30.0
NO_TOKENIZER = "none"  # CHAT2AUDIO_LLM_TOKENIZER=none: never load one, always estimate
_CONTEXT_ERROR = re.compile(
    r"context length|context window|context size|max_model_len|maximum model length|context_length_exceeded",
    re.IGNORECASE,
)
_WINDOW_IN_ERROR = re.compile(
    r"maximum context length (?:is|of) (\d+)|maximum model length (?:is|of) (\d+)|context length \((\d+) tokens\)"
    r"|n_ctx\W+(\d+)", re.IGNORECASE,
)
_PROMPT_IN_ERROR = re.compile(
    r"(\d+) input tokens|prompt \(length (\d+)\)|input \((\d+) tokens\)|n_prompt_tokens\W+(\d+)"
    r"|(\d+) in the messages", re.IGNORECASE,
)


class OpenAIBackend(UpstreamClient):
    """Streams chat completions from an OpenAI-compatible HTTP server."""

    name = "openai"
    kind = "LLM"
    endpoint = "/chat/completions"
    example_url = "http://127.0.0.1:8001/v1"
    example_model = "Qwen/Qwen2.5-7B-Instruct"

    def __init__(
        self,
        *,
        send_repetition_penalty: bool = True,
        context_tokens: int | None = None,
        tokenizer: str | None = None,
        models_dir: Path | None = None,
        trust_remote_code: bool = False,
        **connection: Any,
    ) -> None:
        """`context_tokens`: the window as configured (it wins over what the server says);
        `tokenizer`: a local copy of the served model's tokenizer (relative: under `models_dir`),
        or "none"; unset, one is looked for where the server says it loaded the model from.
        `connection`: the keyword arguments of `UpstreamClient` (base_url, model, api_key, …)."""
        super().__init__(**connection)
        # vLLM/SGLang honour `repetition_penalty`; OpenAI itself rejects unknown fields, so it
        # can be turned off, and is dropped for good after the first 400 that names it.
        self._send_repetition_penalty = send_repetition_penalty
        self._configured_window = context_tokens
        self.context_tokens = context_tokens or DEFAULT_CONTEXT_TOKENS
        self.context_source = "CHAT2AUDIO_LLM_CONTEXT_TOKENS" if context_tokens else "default"
        self._tokenizer_setting = tokenizer
        self._models_dir = models_dir
        self._trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        self._tokenizer_name: str | None = None
        self._rediscover_at: float | None = None  # set while the server could not be asked
        self.tokens_generated = 0  # a counter since start-up, for /metrics and /stats
        self.active_generations = 0  # streams open now

    def describe(self) -> str:
        counted = f"tokenizer {self._tokenizer_name}" if self._tokenizer is not None else "an upper-bound estimate"
        return (
            f"openai · {self._model} at {self.url} · context {self.context_tokens} tokens "
            f"({self.context_source}), counted by {counted}"
        )

    @property
    def counts_exactly(self) -> bool:
        """Whether `count_tokens` is the served model's own count, or only an upper bound."""
        return self._tokenizer is not None

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        """Prompt length in tokens: the served model's chat template where its tokenizer is at
        hand, else an upper bound (see ESTIMATE_TEMPLATE_TOKENS). Blocking: run it off the loop."""
        if self._tokenizer is None:
            return ESTIMATE_TEMPLATE_TOKENS + sum(
                ESTIMATE_PER_MESSAGE_TOKENS + len(m.content.encode()) for m in messages
            )
        return len(chat_template_ids(self._tokenizer, messages))

    async def start(self) -> None:
        """Check the configuration, open the client, and ask the server for its window."""
        await super().start()
        if self._tokenizer_setting and self._tokenizer_setting != NO_TOKENIZER and self._tokenizer is None:
            path = Path(self._tokenizer_setting).expanduser()
            if not path.is_absolute() and self._models_dir is not None:
                path = self._models_dir / path
            # Named in the configuration: it must load, or the start-up says why.
            self._tokenizer = await asyncio.to_thread(self._load_tokenizer, path, self._tokenizer_setting, required=True)
        await self._discover()

    async def _discover(self) -> None:
        """The window from the server (vLLM's /models, llama.cpp's /props) unless configured, and,
        unless configured, a tokenizer where the server says it loaded the model from."""
        entry = await self._served_model()
        if entry is None:
            return  # unreachable: asked again later (see `stream_chat`)
        window: int | None = None
        source = ""
        if isinstance(entry.get("max_model_len"), int):
            window, source = entry["max_model_len"], "the server's /models"
        elif (n_ctx := await self._props_n_ctx()) is not None:
            window, source = n_ctx, "the server's /props"
        if window and self._configured_window is None:
            self.context_tokens, self.context_source = window, source
        elif window and window < self.context_tokens:
            log.warning(
                "CHAT2AUDIO_LLM_CONTEXT_TOKENS=%d is larger than the %d tokens %s gives; long conversations will fail",
                self.context_tokens, window, self.url,
            )
        if self._tokenizer is None and self._tokenizer_setting is None:
            for candidate in (entry.get("root"), self._model):
                if isinstance(candidate, str) and (found := self._local_tokenizer_dir(candidate)) is not None:
                    self._tokenizer = await asyncio.to_thread(self._load_tokenizer, found, candidate, required=False)
                    if self._tokenizer is not None:
                        break

    async def _served_model(self) -> dict[str, Any] | None:
        """The served model's entry in the server's model list ({} when it is not listed there);
        None when the server could not be asked."""
        client = self._started_client().with_options(max_retries=0, timeout=self._connect_timeout_s)
        try:
            page = await client.models.list(extra_headers=self._headers)
        except openai.APIStatusError as exc:  # a server without the route still serves chats
            log.info("%s: no model list (HTTP %d); context window not discovered", self.url, exc.status_code)
            self._rediscover_at = None
            return {}
        except openai.APIError as exc:
            log.warning("%s: cannot ask for the context window (%s); asking again later", self.url, type(exc).__name__)
            self._rediscover_at = time.monotonic() + REDISCOVER_EVERY_S
            return None
        self._rediscover_at = None
        entries = [model.model_dump() for model in page.data]
        named = [entry for entry in entries if entry.get("id") == self._model]
        # A server with one model answers whatever name is asked for (llama.cpp, a proxy): take it.
        return named[0] if named else entries[0] if len(entries) == 1 else {}

    async def _props_n_ctx(self) -> int | None:
        """llama.cpp's per-request window, from `/props` at the server's root (not under /v1)."""
        root = re.sub(r"/v1$", "", self._base_url)
        client = self._started_client().with_options(max_retries=0, timeout=self._connect_timeout_s)
        try:
            props = await client.get(f"{root}/props", cast_to=object, options={"headers": self._headers})
        except openai.APIError:
            return None
        if not isinstance(props, dict):
            return None
        settings = props.get("default_generation_settings")
        for n_ctx in (settings.get("n_ctx") if isinstance(settings, dict) else None, props.get("n_ctx")):
            if isinstance(n_ctx, int) and n_ctx > 0:
                return n_ctx
        return None

    def _local_tokenizer_dir(self, name: str) -> Path | None:
        """A directory on this machine holding the tokenizer of the model the server names
        `name`: a path that exists here, or a hub id already in the local hub cache (never fetched)."""
        path = Path(name).expanduser()
        for folder in (path, self._models_dir / path if self._models_dir and not path.is_absolute() else None):
            if folder is not None and (folder / "tokenizer_config.json").is_file():
                return folder
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "tokenizer_config.json")
            if isinstance(cached, str):
                return Path(cached).parent
        return None

    def _load_tokenizer(self, folder: Path, name: str, *, required: bool) -> Any:
        """The tokenizer in `folder` if it has a chat template (a count without the template is
        not the server's count); None otherwise, or an error when it was configured."""
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                folder, trust_remote_code=self._trust_remote_code, local_files_only=True
            )
        except (OSError, ValueError, ImportError, KeyError) as exc:  # no files, unknown class, missing library
            log.log(logging.WARNING if required else logging.INFO, "no tokenizer loads from %s: %r", folder, exc)
            tokenizer = None
        if tokenizer is None or not tokenizer.chat_template:
            if required:
                raise LLMError(
                    f"CHAT2AUDIO_LLM_TOKENIZER={name}: no tokenizer with a chat template in {folder}", status=503
                )
            return None
        self._tokenizer_name = name
        return tokenizer

    def _request(self, messages: list[ChatMessage], options: GenerationOptions) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "extra_headers": self._headers,
        }
        # Sent only when asked for: the server's own defaults (no seed, no stop) stay untouched,
        # and servers that know neither field still take requests that use neither.
        if options.seed is not None:
            request["seed"] = options.seed
        if stops := [stop for stop in options.stop if stop]:
            request["stop"] = stops
        if self._send_repetition_penalty and options.repetition_penalty != 1.0:
            request["extra_body"] = {"repetition_penalty": options.repetition_penalty}
        return request

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[TextPiece]:
        """The reply as it is generated; the last piece carries the finish reason. Closing the
        iterator closes the HTTP stream, which makes vLLM abort the generation."""
        if self._rediscover_at is not None and time.monotonic() >= self._rediscover_at:
            self._rediscover_at = None  # one request asks; the others go on meanwhile
            await self._discover()
        stream = await self._open(self._request(messages, options))
        tally = _Tally()
        self.active_generations += 1
        try:
            async for piece in self._pieces(stream, tally):
                yield piece
        except ValueError as exc:  # the SDK's json.loads of an event
            raise LLMError("upstream sent malformed JSON in its stream", status=502) from exc
        except openai.APIError as exc:
            if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
                log.warning("LLM stream from %s broke: %r", self.url, exc.__cause__)
                raise LLMError(
                    f"upstream stream ended early: the LLM server at {self.url} closed the connection", status=502
                ) from exc
            message, status = self._failure(exc, streaming=True)
            raise LLMError(message, status=status) from exc
        finally:
            self.active_generations -= 1
            self.tokens_generated += tally.tokens
            await stream.close()

    async def _open(self, request: dict[str, Any]) -> Stream:
        """Send the request and wait for the answer's headers; the SDK retries what is safe to
        retry (connection failures, 429, 5xx) before then."""
        client = self._started_client()
        try:
            return await client.chat.completions.create(**request)
        except openai.APIError as exc:
            rejected = isinstance(exc, openai.BadRequestError) and "repetition_penalty" in str(exc.body)
            if rejected and "extra_body" in request:
                log.warning("%s rejects repetition_penalty; no longer sending it", self.url)
                self._send_repetition_penalty = False
                del request["extra_body"]
                return await self._open(request)
            if isinstance(exc, openai.BadRequestError) and _CONTEXT_ERROR.search(str(exc.body) + str(exc.code)):
                raise self._too_long(exc, request) from exc
            message, status = self._failure(exc, streaming=True)
            raise LLMError(message, status=status) from exc

    def _too_long(self, exc: openai.BadRequestError, request: dict[str, Any]) -> LLMError:
        """The server's "maximum context length" 400, as the client's error (4xx) that says how
        long the prompt may be; a window the server names there is the window from now on."""
        text = str(exc.body)
        window = _first_number(_WINDOW_IN_ERROR, text)
        if window and self._configured_window is None and window != self.context_tokens:
            log.warning("%s says its context window is %d tokens, not %d", self.url, window, self.context_tokens)
            self.context_tokens, self.context_source = window, "the server's error message"
        window = window or self.context_tokens
        reply = int(request.get("max_tokens") or 0)
        prompt = _first_number(_PROMPT_IN_ERROR, text)
        has = f"; this one has {prompt}{' or more' if 'at least' in text else ''}" if prompt else ""
        return LLMError(
            f"the prompt is too long for the model's context window of {window} tokens: with {reply} kept for the "
            f"reply, the persona, history and input may take {window - reply} tokens{has}; shorten the input",
            status=400,
        )

    async def _pieces(self, stream: Stream, tally: _Tally) -> AsyncIterator[TextPiece]:
        finish: FinishReason | None = None
        saw_chunk = False
        async for chunk in stream:
            saw_chunk = True
            if (usage := getattr(chunk, "usage", None)) is not None:
                tally.usage(getattr(usage, "completion_tokens", None))
            if getattr(chunk, "object", None) == "error":  # older vLLM's in-stream error event
                detail = scrub(str(getattr(chunk, "message", "unknown error")), secret=self._api_key)
                raise LLMError(f"LLM server error mid-stream: {detail}", status=502)
            choices = getattr(chunk, "choices", None) or []
            if finish is not None or not choices:
                continue  # Read on to [DONE] (and the usage), so that the connection can be reused.
            choice = choices[0]
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None)
            text = text if isinstance(text, str) else ""
            if text:
                tally.pieces += 1
            if reason := getattr(choice, "finish_reason", None):
                finish = "length" if reason == "length" else "stop"
                yield TextPiece(text, finish)
            elif text:
                yield TextPiece(text)
        if finish is not None:
            return  # Complete reply; a missing [DONE] loses nothing.
        content_type = stream.response.headers.get("content-type", "")
        if not saw_chunk and "text/event-stream" not in content_type:
            raise LLMError(
                f"upstream did not send an event stream (content-type {content_type or 'none'})", status=502
            )
        raise LLMError("upstream stream ended early: no finish_reason before the end of the stream", status=502)


class _Tally:
    """Tokens one reply generated: the server's own count (its usage) where it sends one, else
    the content pieces streamed (a piece is one token on vLLM, SGLang and llama.cpp)."""

    def __init__(self) -> None:
        self.pieces = 0
        self._usage: int | None = None

    def usage(self, completion_tokens: object) -> None:
        if isinstance(completion_tokens, int):
            # Cumulative where a server reports it on every chunk: the last is the total.
            self._usage = completion_tokens

    @property
    def tokens(self) -> int:
        return self._usage if self._usage is not None else self.pieces


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    return int(next(group for group in match.groups() if group)) if match else None
