"""LLM backend `openai`: streams replies from a remote OpenAI-compatible server (vLLM, SGLang,
llama.cpp, Ollama) over `POST {base_url}/chat/completions` with server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from chat2audio.runtime.upstream import (
    UpstreamClient,
    describe_transport_failure,
    error_message,
    read_error,
    scrub,
    upstream_http_status,
)
from llm.base import ChatMessage, FinishReason, GenerationOptions, LLMError, TextPiece

log = logging.getLogger(__name__)

def _is_error_event(payload: dict[str, Any]) -> bool:
    return "error" in payload or payload.get("object") == "error"


class OpenAIBackend(UpstreamClient):
    """Streams chat completions from an OpenAI-compatible HTTP server."""

    name = "openai"
    kind = "LLM"
    endpoint = "/chat/completions"
    accept = "text/event-stream"
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

    def _body(self, messages: list[ChatMessage], options: GenerationOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if self._send_repetition_penalty and options.repetition_penalty != 1.0:
            body["repetition_penalty"] = options.repetition_penalty
        return body

    async def stream_chat(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[TextPiece]:
        """The reply as it is generated; the last piece carries the finish reason."""
        client = self._started_client()
        body = self._body(messages, options)
        retried = False
        while True:
            try:
                async with client.stream("POST", self._base_url + self.endpoint, json=body) as response:
                    if response.status_code >= 400:
                        message = await read_error(response, secret=self._api_key)
                        if (
                            response.status_code == 400
                            and not retried
                            and "repetition_penalty" in body
                            and "repetition_penalty" in message
                        ):
                            log.warning(
                                "%s rejects repetition_penalty; no longer sending it", self.url
                            )
                            self._send_repetition_penalty = False
                            body.pop("repetition_penalty")
                            retried = True
                            continue
                        raise LLMError(
                            f"LLM server returned HTTP {response.status_code}: {message}",
                            status=upstream_http_status(response.status_code),
                        )
                    async for piece in self._pieces(response):
                        yield piece
                    return
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                log.warning("LLM stream from %s broke: %r", self.url, exc)
                raise LLMError(
                    f"upstream stream ended early: the LLM server at {self.url} "
                    "closed the connection",
                    status=502,
                ) from exc
            except httpx.HTTPError as exc:
                message, status = describe_transport_failure(
                    exc,
                    what="LLM",
                    url=self.url,
                    connect_timeout_s=self._connect_timeout_s,
                    timeout_s=self._timeout_s,
                    streaming=True,
                )
                raise LLMError(message, status=status) from exc

    async def _pieces(self, response: httpx.Response) -> AsyncIterator[TextPiece]:
        finish: FinishReason | None = None
        saw_event = False
        async for data in _sse_data(response):
            saw_event = True
            if data == "[DONE]":
                if finish is None:
                    raise LLMError(
                        "upstream stream ended early: [DONE] before any finish_reason", status=502
                    )
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise LLMError("upstream sent malformed JSON in its stream", status=502) from None
            if not isinstance(chunk, dict):
                raise LLMError("upstream sent malformed JSON in its stream", status=502)
            if _is_error_event(chunk):
                message = error_message(chunk) or "unknown error"
                raise LLMError(f"LLM server error mid-stream: {scrub(message, secret=self._api_key)}", status=502)
            if finish is not None:
                continue  # Only the usage chunk is expected now.
            choices = chunk.get("choices") or []
            if not choices:
                if usage := chunk.get("usage"):
                    log.debug("LLM usage: %s", usage)
                continue
            choice = choices[0] if isinstance(choices[0], dict) else {}
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if isinstance(text, str) else ""
            reason = choice.get("finish_reason")
            if reason:
                finish = "length" if reason == "length" else "stop"
                yield TextPiece(text, finish)
                # Keep reading to [DONE] so the connection can be reused.
            elif text:
                yield TextPiece(text)
        if finish is not None:
            return  # Complete reply; a missing [DONE] loses nothing.
        content_type = response.headers.get("content-type", "")
        if not saw_event and "text/event-stream" not in content_type:
            raise LLMError(
                f"upstream did not send an event stream (content-type {content_type or 'none'})",
                status=502,
            )
        raise LLMError("upstream stream ended early: no finish_reason and no [DONE]", status=502)


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data` of each server-sent event, multi-line data joined with newlines."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        # event, id, retry: nothing in this protocol needs them.
    if data:
        # The spec drops an unterminated event; servers that omit the last blank line exist.
        yield "\n".join(data)
