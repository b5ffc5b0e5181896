"""LLM backend `openai`: streams replies from a remote OpenAI-compatible server (vLLM, SGLang,
llama.cpp, Ollama) through the official `openai` SDK's streamed chat completions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

from chat2audio.runtime.upstream import UpstreamClient, scrub
from llm.base import ChatMessage, FinishReason, GenerationOptions, LLMError, TextPiece

log = logging.getLogger(__name__)

Stream = openai.AsyncStream[ChatCompletionChunk]


class OpenAIBackend(UpstreamClient):
    """Streams chat completions from an OpenAI-compatible HTTP server."""

    name = "openai"
    kind = "LLM"
    endpoint = "/chat/completions"
    example_url = "http://127.0.0.1:8001/v1"
    example_model = "Qwen/Qwen2.5-7B-Instruct"
    # The server's window is not discoverable over the OpenAI API; this matches the README's
    # `vllm serve --max-model-len 4096`. CHAT2AUDIO_LLM_CONTEXT_TOKENS overrides it.
    context_tokens = 4096

    def __init__(self, *, send_repetition_penalty: bool = True, **connection: Any) -> None:
        """`connection`: the keyword arguments of `UpstreamClient` (base_url, model, api_key, …)."""
        super().__init__(**connection)
        # vLLM/SGLang honour `repetition_penalty`; OpenAI itself rejects unknown fields, so it
        # can be turned off, and is dropped for good after the first 400 that names it.
        self._send_repetition_penalty = send_repetition_penalty

    def describe(self) -> str:
        return f"openai · {self._model} at {self.url}"

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
        stream = await self._open(self._request(messages, options))
        try:
            async for piece in self._pieces(stream):
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
            message, status = self._failure(exc, streaming=True)
            raise LLMError(message, status=status) from exc

    async def _pieces(self, stream: Stream) -> AsyncIterator[TextPiece]:
        finish: FinishReason | None = None
        saw_chunk = False
        async for chunk in stream:
            saw_chunk = True
            if getattr(chunk, "object", None) == "error":  # older vLLM's in-stream error event
                detail = scrub(str(getattr(chunk, "message", "unknown error")), secret=self._api_key)
                raise LLMError(f"LLM server error mid-stream: {detail}", status=502)
            choices = getattr(chunk, "choices", None) or []
            if finish is not None or not choices:
                if usage := getattr(chunk, "usage", None):
                    log.debug("LLM usage: %s", usage)
                continue  # Read on to [DONE], so that the connection can be reused.
            choice = choices[0]
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None)
            text = text if isinstance(text, str) else ""
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
