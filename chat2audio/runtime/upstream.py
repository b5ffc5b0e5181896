"""Shared by the HTTP clients of remote LLM/STT servers: their connection and failure reporting."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

# Upstream error texts are shown to clients: keep them short.
MAX_UPSTREAM_MESSAGE_CHARS = 300
# Enough of an error body to find its message; the rest is never read.
MAX_ERROR_BODY_BYTES = 16 * 1024
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 60.0


def safe_url(url: str) -> str:
    """`url` without credentials, query or fragment, fit to appear in messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def error_message(payload: Any) -> str | None:
    """The human-readable message of an error body in the dialects servers use."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):  # OpenAI, vLLM, SGLang, llama.cpp
            msg = err.get("message")
            return str(msg) if msg is not None else json.dumps(err)[:MAX_UPSTREAM_MESSAGE_CHARS]
        if isinstance(err, str):  # Ollama
            return err
        if payload.get("object") == "error" and "message" in payload:  # older vLLM
            return str(payload["message"])
        if "detail" in payload:  # FastAPI-based servers
            return str(payload["detail"])
        if "message" in payload:
            return str(payload["message"])
    return None


def scrub(text: str, *, secret: str | None, limit: int = MAX_UPSTREAM_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters, with `secret` blanked should it be echoed."""
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


async def read_error(response: httpx.Response, *, secret: str | None) -> str:
    """The scrubbed message of an error response, from at most `MAX_ERROR_BODY_BYTES` of its body."""
    raw = b""
    try:
        async for chunk in response.aiter_bytes():
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass  # The status alone still says what happened.
    text = raw[:MAX_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
    try:
        message = error_message(json.loads(text))
    except ValueError:
        message = None
    if message is None:
        message = text.strip() or response.reason_phrase or "no details"
    return scrub(message, secret=secret)


def upstream_http_status(code: int) -> int:
    """The status to answer with when the upstream answered `code` (>= 400)."""
    # An upstream that is saturated means we are too: report it as such (clients retry 503).
    return 503 if code in (429, 503) else 502


def describe_transport_failure(
    exc: httpx.HTTPError,
    *,
    what: str,
    url: str,
    connect_timeout_s: float,
    timeout_s: float,
    streaming: bool = False,
) -> tuple[str, int]:
    """The client-safe message and HTTP status for a request to the `what` ("LLM", "STT") server
    at `url` that failed without an answer; the failures worth a closer look are logged."""
    if isinstance(exc, httpx.PoolTimeout):
        return f"too many concurrent {what} requests; try again later", 503
    if isinstance(exc, httpx.ConnectTimeout):
        return f"{what} server at {url} did not accept a connection within {connect_timeout_s:g} s", 504
    if isinstance(exc, httpx.TimeoutException):
        # A stream times out between pieces; a plain request waits for the whole answer.
        silence = "sent nothing for" if streaming else "did not answer within"
        return f"{what} server at {url} {silence} {timeout_s:g} s", 504
    if isinstance(exc, httpx.ConnectError):
        log.warning("%s server at %s unreachable: %r", what, url, exc)
        return f"{what} server at {url} is unreachable ({_connect_failure(exc)})", 503
    log.warning("%s request to %s failed: %r", what, url, exc)
    return f"{what} request to {url} failed", 502


def _connect_failure(exc: httpx.ConnectError) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx → httpcore → anyio → the OS error
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        cause = cause.__cause__ or cause.__context__
    return "cannot connect"


class UpstreamClient:
    """The connection a remote backend keeps to its server: checks the configuration at start-up
    and holds one pooled HTTP client, with connections kept open for reuse."""

    kind: ClassVar[str]  # "LLM" or "STT": names the settings and prefixes messages
    endpoint: ClassVar[str]  # below the base URL, e.g. "/chat/completions"
    accept: ClassVar[str]  # the media type of a successful answer
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = (base_url or "").rstrip("/")
        self._model = model
        self._api_key = api_key or None
        self._timeout_s = timeout_s
        self._connect_timeout_s = min(connect_timeout_s, timeout_s)
        self._max_connections = max_connections
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        """The endpoint, safe to show (no credentials)."""
        return safe_url(self._base_url + self.endpoint)

    async def start(self) -> None:
        """Check the configuration and open the HTTP client."""
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
        headers = {"Accept": self.accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self._timeout_s, connect=self._connect_timeout_s, pool=self._timeout_s),
            limits=httpx.Limits(max_connections=self._max_connections, max_keepalive_connections=self._max_connections),
            transport=self._transport,
            trust_env=False,
        )

    async def stop(self) -> None:
        """Close the HTTP client and every connection it holds."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _started_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not been called")
        return self._client
