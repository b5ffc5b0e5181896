"""Shared by the clients of remote OpenAI-compatible LLM/STT servers: one `openai.AsyncOpenAI`
per backend, and the translation of the SDK's failures into short, client-safe messages."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx2  # the SDK's HTTP library: its limits and timeouts
import openai

log = logging.getLogger(__name__)

# Upstream error texts are shown to clients: keep them short.
MAX_UPSTREAM_MESSAGE_CHARS = 300
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 60.0
# The SDK retries connection failures, timeouts, 408/409/429/5xx (honouring Retry-After) before
# the first byte of an answer. One retry rides out a blip; more would multiply the wait on a
# hung server (each attempt may take `timeout_s`) while someone waits to hear a reply.
MAX_RETRIES = 1


def safe_url(url: str) -> str:
    """`url` without credentials, query or fragment, fit to appear in messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, *, secret: str | None, limit: int = MAX_UPSTREAM_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters, with `secret` blanked should it be echoed."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _status_detail(exc: openai.APIStatusError) -> str:
    """The human-readable part of an error answer, in the dialects servers use. The SDK has
    already unwrapped `{"error": …}` (OpenAI, vLLM, SGLang, llama.cpp; a string for Ollama)."""
    body = exc.body
    if isinstance(body, dict):
        for key in ("message", "detail"):  # OpenAI-style / older vLLM; FastAPI-based servers
            if body.get(key) is not None:
                return str(body[key])
        return json.dumps(body)[:MAX_UPSTREAM_MESSAGE_CHARS]
    if body is not None and str(body).strip():
        return str(body)  # plain text, e.g. a proxy's HTML error page
    return exc.response.reason_phrase or "no details"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: the SDK's error → httpx2 (or httpx) → httpcore → anyio → the OS."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _connect_failure(exc: BaseException) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
    return "cannot connect"


def describe_failure(
    exc: openai.APIError, *, what: str, url: str, secret: str | None,
    connect_timeout_s: float, timeout_s: float, streaming: bool = False,
) -> tuple[str, int]:
    """The client-safe message and HTTP status for a failed request to the `what` ("LLM", "STT")
    server at `url`; the failures worth a closer look are logged."""
    if isinstance(exc, openai.APIStatusError):
        # An upstream that is saturated means we are too: report it as such (clients retry 503).
        status = 503 if exc.status_code in (429, 503) else 502
        return f"{what} server returned HTTP {exc.status_code}: {scrub(_status_detail(exc), secret=secret)}", status
    if isinstance(exc, openai.APITimeoutError):
        causes = {type(cause).__name__ for cause in _causes(exc)}  # by name: httpx2's or httpx's
        if "PoolTimeout" in causes:
            return f"too many concurrent {what} requests; try again later", 503
        if "ConnectTimeout" in causes:
            return f"{what} server at {url} did not accept a connection within {connect_timeout_s:g} s", 504
        # A stream times out between pieces; a plain request waits for the whole answer.
        silence = "sent nothing for" if streaming else "did not answer within"
        return f"{what} server at {url} {silence} {timeout_s:g} s", 504
    if isinstance(exc, openai.APIConnectionError):
        if any(type(cause).__name__ == "ConnectError" for cause in _causes(exc)):
            log.warning("%s server at %s unreachable: %r", what, url, exc.__cause__)
            return f"{what} server at {url} is unreachable ({_connect_failure(exc)})", 503
        log.warning("%s request to %s failed: %r", what, url, exc.__cause__)
        return f"{what} request to {url} failed", 502
    # An error the server reported inside a successful answer (vLLM's in-stream error event).
    return f"{what} server error mid-stream: {scrub(exc.message, secret=secret)}", 502


class UpstreamClient:
    """The connection a remote backend keeps to its server: checks the configuration at start-up
    and holds one SDK client, whose pooled connections are kept open for reuse."""

    kind: ClassVar[str]  # "LLM" or "STT": names the settings and prefixes messages
    endpoint: ClassVar[str]  # below the base URL, e.g. "/chat/completions"
    example_url: ClassVar[str]  # for the start-up error messages
    example_model: ClassVar[str]

    def __init__(
        self,
        *,
        base_url: str | None,
        model: str | None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_connections: int = 100,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self._base_url = (base_url or "").rstrip("/")
        self._model = model
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        self._connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._max_connections = max_connections
        self._max_retries = max_retries
        self._client: openai.AsyncOpenAI | None = None

    @property
    def url(self) -> str:
        """The endpoint, safe to show (no credentials)."""
        return safe_url(self._base_url + self.endpoint)

    async def start(self) -> None:
        """Check the configuration and open the SDK client."""
        setting = f"CHAT2AUDIO_{self.kind}_BASE_URL"
        if not self._base_url:
            raise ValueError(f"the openai {self.kind} backend needs {setting}, e.g. {setting}={self.example_url}")
        if urlsplit(self._base_url).scheme not in ("http", "https"):
            raise ValueError(
                f"{setting} must be an http(s) URL such as {self.example_url}, got {safe_url(self._base_url)!r}"
            )
        if not self._model:
            raise ValueError(
                f"the openai {self.kind} backend needs CHAT2AUDIO_{self.kind}_MODEL, the model name the server "
                f"serves, e.g. CHAT2AUDIO_{self.kind}_MODEL={self.example_model}"
            )
        if self._client is not None:
            return
        timeout = httpx2.Timeout(self._timeout_s, connect=self._connect_timeout_s)
        self._client = openai.AsyncOpenAI(
            base_url=self._base_url,
            # Never the environment's OPENAI_API_KEY, which is meant for api.openai.com; a keyless
            # server gets no Authorization header at all (see `_headers`).
            api_key=self._api_key or "none",
            timeout=timeout,
            max_retries=self._max_retries,
            http_client=openai.DefaultAsyncHttpx2Client(
                timeout=timeout,
                limits=httpx2.Limits(max_connections=self._max_connections,
                                     max_keepalive_connections=self._max_connections),
                trust_env=False,  # the server is named by its URL, never reached through a proxy
            ),
        )

    async def stop(self) -> None:
        """Close the SDK client and every connection it holds."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _started_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not been called")
        return self._client

    @property
    def _headers(self) -> dict[str, object]:
        """Per-request headers: none of the environment's OPENAI_ORG_ID / OPENAI_PROJECT_ID, and
        no Authorization without a key (the SDK wants that said per request)."""
        headers: dict[str, object] = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}
        if not self._api_key:
            headers["Authorization"] = openai.omit
        return headers

    def _failure(self, exc: openai.APIError, *, streaming: bool = False) -> tuple[str, int]:
        return describe_failure(
            exc, what=self.kind, url=self.url, secret=self._api_key,
            connect_timeout_s=self._connect_timeout_s, timeout_s=self._timeout_s, streaming=streaming,
        )
