"""The `openai` backend against a real scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from chat2audio.errors import InvalidInput, as_service_error
from chat2audio.settings import Settings
from chat2audio.wiring import create_llm
from llm import openai_backend
from llm.base import ChatMessage, GenerationOptions, LLMBackend, LLMError, TextPiece
from llm.openai_backend import DEFAULT_CONTEXT_TOKENS, OpenAIBackend
from tests.fixtures.openai_stub_server import DEFAULT_REPLY, OpenAIStubServer, split_pieces
from tests.fixtures.tiny_qwen2 import _build_tokenizer
from tests.inprocess import scripted_service, speak

API_KEY = "sk-test-SECRET-0123456789"
MESSAGES = [
    ChatMessage("system", "You are Nahida."),
    ChatMessage("user", "Hello!"),
]
OPTIONS = GenerationOptions(max_new_tokens=64, temperature=0.5, top_p=0.8, repetition_penalty=1.1)


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStubServer]:
    with OpenAIStubServer(api_key=API_KEY, stall_s=3.0) as server:
        yield server


def make_backend(stub: OpenAIStubServer, model: str = "some-model", **kw: object) -> OpenAIBackend:
    options: dict[str, object] = {"api_key": API_KEY, "timeout_s": 5.0}
    options.update(kw)
    return OpenAIBackend(base_url=stub.base_url, model=model, **options)  # type: ignore[arg-type]


@pytest.fixture
async def backend(stub: OpenAIStubServer) -> AsyncIterator[OpenAIBackend]:
    b = make_backend(stub)
    await b.start()
    yield b
    await b.stop()


async def collect(backend: OpenAIBackend, model: str | None = None,
                  options: GenerationOptions = OPTIONS) -> list[TextPiece]:
    if model is not None:
        backend._model = model
    return [p async for p in backend.stream_chat(MESSAGES, options)]


async def expect_error(backend: OpenAIBackend, model: str) -> LLMError:
    with pytest.raises(LLMError) as info:
        await collect(backend, model)
    assert API_KEY not in str(info.value)
    return info.value


def test_split_pieces_round_trips() -> None:
    for text in [DEFAULT_REPLY, "  a  b ", "中文，没有空格。", ""]:
        assert "".join(split_pieces(text)) == text


@pytest.mark.asyncio
async def test_normal_stream(stub: OpenAIStubServer, backend: OpenAIBackend) -> None:
    assert isinstance(backend, LLMBackend)
    pieces = await collect(backend)
    assert "".join(p.text for p in pieces) == DEFAULT_REPLY
    assert len(pieces) > 5  # streamed, not one lump
    assert pieces[-1].finish_reason == "stop"
    assert all(p.finish_reason is None for p in pieces[:-1])

    request = stub.requests[-1]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body == {
        "model": "some-model",
        "messages": [
            {"role": "system", "content": "You are Nahida."},
            {"role": "user", "content": "Hello!"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.8,
        "repetition_penalty": 1.1,
    }
    # The SDK stops reading at [DONE]; the stub may still be writing the chunked body's end.
    stream = stub.streams[-1]
    for _ in range(100):
        if stream.completed or stream.disconnected.is_set():
            break
        await asyncio.sleep(0.02)
    assert stream.completed and not stream.disconnected.is_set()


@pytest.mark.asyncio
async def test_seed_and_stop_reach_the_server_only_when_set(stub: OpenAIStubServer, backend: OpenAIBackend) -> None:
    await collect(backend, options=GenerationOptions(seed=42, stop=("\n\n", "", "User:")))
    body = stub.requests[-1].body
    assert (body["seed"], body["stop"]) == (42, ["\n\n", "User:"])  # an empty stop string means nothing
    await collect(backend, options=GenerationOptions())
    assert "seed" not in stub.requests[-1].body and "stop" not in stub.requests[-1].body


@pytest.mark.asyncio
async def test_connection_is_reused(stub: OpenAIStubServer, backend: OpenAIBackend) -> None:
    for _ in range(3):
        assert "".join(p.text for p in await collect(backend)) == DEFAULT_REPLY


@pytest.mark.asyncio
async def test_repetition_penalty_one_is_not_sent(stub: OpenAIStubServer,
                                                  backend: OpenAIBackend) -> None:
    await collect(backend, options=GenerationOptions(repetition_penalty=1.0))
    assert "repetition_penalty" not in stub.requests[-1].body


@pytest.mark.asyncio
async def test_repetition_penalty_can_be_switched_off(stub: OpenAIStubServer) -> None:
    b = make_backend(stub, send_repetition_penalty=False)
    await b.start()
    try:
        await collect(b)
    finally:
        await b.stop()
    assert "repetition_penalty" not in stub.requests[-1].body


@pytest.mark.asyncio
async def test_repetition_penalty_dropped_when_rejected(stub: OpenAIStubServer,
                                                        backend: OpenAIBackend) -> None:
    pieces = await collect(backend, "stub-400-repetition")
    assert "".join(p.text for p in pieces) == DEFAULT_REPLY
    assert "repetition_penalty" in stub.requests[-2].body
    assert "repetition_penalty" not in stub.requests[-1].body
    await collect(backend)  # remembered: no second rejected attempt
    assert "repetition_penalty" not in stub.requests[-1].body


@pytest.mark.asyncio
async def test_no_auth_header_without_key(stub: OpenAIStubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's environment defaults are meant for api.openai.com: none of them reaches our server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-from-the-environment")
    b = make_backend(stub, api_key=None)
    await b.start()
    try:
        err = await expect_error(b, "some-model")
    finally:
        await b.stop()
    assert "authorization" not in stub.requests[-1].headers
    assert "openai-organization" not in stub.requests[-1].headers
    assert err.status == 502 and "HTTP 401" in str(err)


@pytest.mark.asyncio
async def test_retries_once_only_what_may_pass_next_time(stub: OpenAIStubServer,
                                                         backend: OpenAIBackend) -> None:
    before = len(stub.requests)
    await expect_error(backend, "stub-429")
    assert len(stub.requests) - before == 2  # the SDK's one retry
    before = len(stub.requests)
    await expect_error(backend, "stub-401")
    assert len(stub.requests) - before == 1  # a 4xx other than 408/409/429 is final


@pytest.mark.asyncio
async def test_quirky_but_valid_sse(backend: OpenAIBackend) -> None:
    pieces = await collect(backend, "stub-quirky")
    assert "".join(p.text for p in pieces) == DEFAULT_REPLY
    assert pieces[-1].finish_reason == "stop"


@pytest.mark.asyncio
async def test_finish_reason_length(backend: OpenAIBackend) -> None:
    pieces = await collect(backend, "stub-length")
    text = "".join(p.text for p in pieces)
    assert text and DEFAULT_REPLY.startswith(text) and text != DEFAULT_REPLY
    assert pieces[-1].finish_reason == "length"


@pytest.mark.asyncio
async def test_max_tokens_reached_is_length(backend: OpenAIBackend) -> None:
    pieces = await collect(backend, options=GenerationOptions(max_new_tokens=3))
    assert "".join(p.text for p in pieces) == "".join(split_pieces(DEFAULT_REPLY)[:3])
    assert pieces[-1].finish_reason == "length"


@pytest.mark.asyncio
async def test_http_401_is_502_without_the_key(stub: OpenAIStubServer) -> None:
    b = make_backend(stub)
    await b.start()
    try:
        err = await expect_error(b, "stub-401")  # the stub echoes the key it was given
    finally:
        await b.stop()
    assert err.status == 502
    assert "HTTP 401" in str(err) and "Incorrect API key provided: ***" in str(err)


@pytest.mark.parametrize(
    ("model", "status", "text"),
    [
        ("stub-500", 502, "HTTP 500: CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("stub-429", 503, "HTTP 429: server is overloaded"),
        ("stub-text-error", 502, "HTTP 502: <html>502 Bad Gateway (nginx)</html>"),
        ("stub-cut", 502, "upstream stream ended early"),
        ("stub-no-done", 502, "upstream stream ended early"),
        ("stub-error-event", 502, "engine dead: worker crashed"),
        ("stub-malformed", 502, "malformed JSON"),
        ("stub-not-sse", 502, "did not send an event stream"),
    ],
)
@pytest.mark.asyncio
async def test_upstream_errors(backend: OpenAIBackend, model: str, status: int, text: str) -> None:
    err = await expect_error(backend, model)
    assert err.status == status
    assert text in str(err)


@pytest.mark.asyncio
async def test_error_after_some_pieces(backend: OpenAIBackend) -> None:
    backend._model = "stub-error-event"
    got: list[TextPiece] = []
    with pytest.raises(LLMError, match="mid-stream"):
        async for piece in backend.stream_chat(MESSAGES, OPTIONS):
            got.append(piece)
    assert "".join(p.text for p in got) == "".join(split_pieces(DEFAULT_REPLY)[:3])


@pytest.mark.asyncio
async def test_long_error_message_is_truncated(backend: OpenAIBackend) -> None:
    backend._model = "stub-400-long"  # the stub quotes the whole prompt back
    with pytest.raises(LLMError) as info:
        [p async for p in backend.stream_chat([ChatMessage("user", "word " * 2000)], OPTIONS)]
    assert info.value.status == 502
    assert "HTTP 400: prompt too long: word word" in str(info.value)
    assert len(str(info.value)) < 400 and str(info.value).endswith("…")


@pytest.mark.asyncio
async def test_read_timeout_is_504(stub: OpenAIStubServer) -> None:
    for model in ("stub-slow", "stub-slow-headers"):
        b = make_backend(stub, timeout_s=0.3)
        await b.start()
        started = time.monotonic()
        try:
            err = await expect_error(b, model)
        finally:
            await b.stop()
        assert err.status == 504 and "sent nothing for 0.3 s" in str(err)
        assert time.monotonic() - started < 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_connection_refused_is_503() -> None:
    url = f"http://user:{API_KEY}@127.0.0.1:{free_port()}/v1"
    b = OpenAIBackend(base_url=url, model="m", api_key=API_KEY)
    await b.start()
    try:
        with pytest.raises(LLMError) as info:
            await collect(b)
    finally:
        await b.stop()
    err = info.value
    assert err.status == 503
    assert "127.0.0.1" in str(err) and "/v1/chat/completions" in str(err)
    assert "connection refused" in str(err)
    assert API_KEY not in str(err) and "user" not in str(err)


@pytest.mark.asyncio
async def test_unknown_host_is_503() -> None:
    b = OpenAIBackend(base_url="http://no-such-host.invalid/v1", model="m")
    await b.start()
    try:
        with pytest.raises(LLMError) as info:
            await collect(b)
    finally:
        await b.stop()
    assert info.value.status == 503 and "no-such-host.invalid" in str(info.value)
    assert "host name not found" in str(info.value)


@pytest.mark.asyncio
async def test_consumer_closing_the_stream_disconnects_upstream(stub: OpenAIStubServer,
                                                                backend: OpenAIBackend) -> None:
    stream = backend.stream_chat(MESSAGES, OPTIONS)
    backend._model = "stub-endless"
    got = [await anext(stream) for _ in range(5)]
    assert all(p.text == " la" for p in got)
    record = stub.streams[-1]
    assert record.scenario == "endless" and not record.disconnected.is_set()
    closed_at = time.monotonic()
    await stream.aclose()
    assert await asyncio.to_thread(record.disconnected.wait, 1.0)
    assert record.disconnected_at is not None and record.disconnected_at - closed_at < 1.0


@pytest.mark.asyncio
async def test_cancelling_the_task_disconnects_upstream(stub: OpenAIStubServer,
                                                        backend: OpenAIBackend) -> None:
    backend._model = "stub-endless"
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream_chat(MESSAGES, OPTIONS):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    record = stub.streams[-1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(record.disconnected.wait, 1.0)


@pytest.mark.asyncio
async def test_no_free_connection_is_503(stub: OpenAIStubServer) -> None:
    b = make_backend(stub, "stub-endless", max_connections=1, timeout_s=0.3, max_retries=0)
    await b.start()
    try:
        stream = b.stream_chat(MESSAGES, OPTIONS)
        await anext(stream)  # holds the one connection
        err = await expect_error(b, "stub-endless")
        await stream.aclose()
    finally:
        await b.stop()
    assert err.status == 503 and "too many concurrent LLM requests" in str(err)


@pytest.mark.asyncio
async def test_many_concurrent_streams(stub: OpenAIStubServer, backend: OpenAIBackend) -> None:
    results = await asyncio.gather(*(collect(backend) for _ in range(20)))
    assert all("".join(p.text for p in r) == DEFAULT_REPLY for r in results)


@pytest.mark.asyncio
async def test_start_fails_fast_without_url_or_model() -> None:
    with pytest.raises(ValueError, match="CHAT2AUDIO_LLM_BASE_URL"):
        await OpenAIBackend(base_url=None, model="m").start()
    with pytest.raises(ValueError, match="CHAT2AUDIO_LLM_MODEL"):
        await OpenAIBackend(base_url="http://127.0.0.1:1/v1", model=None).start()
    with pytest.raises(ValueError, match="http"):
        await OpenAIBackend(base_url="127.0.0.1:8000/v1", model="m").start()


@pytest.mark.asyncio
async def test_stream_before_start_is_an_error() -> None:
    b = OpenAIBackend(base_url="http://127.0.0.1:1/v1", model="m")
    with pytest.raises(RuntimeError, match="start"):
        await collect(b)


@pytest.mark.asyncio
async def test_create_from_settings(stub: OpenAIStubServer) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        llm_backend="openai",
        llm_base_url=stub.base_url + "/",
        llm_model="from-settings",
        llm_api_key=API_KEY,
        llm_timeout_s=7,
    )
    b = create_llm(settings)
    assert isinstance(b, OpenAIBackend) and b.name == "openai"
    await b.start()
    try:
        pieces = await collect(b, options=GenerationOptions())
    finally:
        await b.stop()
    assert "".join(p.text for p in pieces) == DEFAULT_REPLY
    assert stub.requests[-1].body["model"] == "from-settings"
    assert stub.requests[-1].path == "/v1/chat/completions"


# -- the server's context window, token counts, usage ------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer with a chat template, as a model directory ships it."""
    folder = tmp_path_factory.mktemp("served-model")
    _build_tokenizer(folder, 400)
    return folder


@asynccontextmanager
async def started(server: OpenAIStubServer, model: str = "some-model", **kw: Any) -> AsyncIterator[OpenAIBackend]:
    b = OpenAIBackend(base_url=server.base_url, model=model, timeout_s=5.0, **kw)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.mark.asyncio
async def test_window_from_the_model_list() -> None:
    with OpenAIStubServer(model_fields={"max_model_len": 2048}) as server:
        async with started(server) as b:
            assert (b.context_tokens, b.context_source) == (2048, "the server's /models")
            assert "context 2048 tokens (the server's /models)" in b.describe()
        assert [r.path for r in server.requests] == ["/v1/models"]  # no /props when /models says


@pytest.mark.parametrize("props", [{"default_generation_settings": {"n_ctx": 3072}}, {"n_ctx": 3072}])
@pytest.mark.asyncio
async def test_window_from_llama_cpp_props(props: dict[str, Any]) -> None:
    with OpenAIStubServer(props=props) as server:
        async with started(server) as b:
            assert (b.context_tokens, b.context_source) == (3072, "the server's /props")
        assert server.requests[-1].path == "/props"  # at the root, not under /v1


@pytest.mark.asyncio
async def test_window_falls_back_to_the_default() -> None:
    with OpenAIStubServer() as server:
        async with started(server) as b:
            assert (b.context_tokens, b.context_source) == (DEFAULT_CONTEXT_TOKENS, "default")
            assert "context 4096 tokens (default)" in b.describe()


@pytest.mark.asyncio
async def test_configured_window_wins_over_the_server() -> None:
    with OpenAIStubServer(model_fields={"max_model_len": 2048}) as server:
        async with started(server, context_tokens=1024) as b:
            assert (b.context_tokens, b.context_source) == (1024, "CHAT2AUDIO_LLM_CONTEXT_TOKENS")


@pytest.mark.asyncio
async def test_server_down_at_start_is_asked_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_backend, "REDISCOVER_EVERY_S", 0.0)
    port = free_port()
    b = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model="some-model", timeout_s=5.0)
    await b.start()  # a server still loading its model must not keep chat2audio from starting
    try:
        assert b.context_source == "default"
        with OpenAIStubServer(port=port, model_fields={"max_model_len": 2048}):
            await collect(b)
            assert (b.context_tokens, b.context_source) == (2048, "the server's /models")
    finally:
        await b.stop()


@pytest.mark.asyncio
async def test_tokenizer_found_where_the_server_loaded_the_model(tokenizer_dir: Path) -> None:
    with OpenAIStubServer(model_fields={"max_model_len": 2048, "root": str(tokenizer_dir)}) as server:
        async with started(server) as b:
            assert b.counts_exactly and f"tokenizer {tokenizer_dir}" in b.describe()
            exact = AutoTokenizer.from_pretrained(tokenizer_dir).apply_chat_template(
                [{"role": m.role, "content": m.content} for m in MESSAGES], add_generation_prompt=True, tokenize=True
            )
            assert b.count_tokens(MESSAGES) == len(exact["input_ids"] if hasattr(exact, "keys") else exact)


@pytest.mark.asyncio
async def test_tokenizer_setting(tokenizer_dir: Path, tmp_path: Path) -> None:
    with OpenAIStubServer(model_fields={"root": str(tokenizer_dir)}) as server:
        async with started(server, tokenizer="none") as b:
            assert not b.counts_exactly and "an upper-bound estimate" in b.describe()
        async with started(server, tokenizer=tokenizer_dir.name, models_dir=tokenizer_dir.parent) as b:
            assert b.counts_exactly  # relative: under the models dir
        with pytest.raises(LLMError, match="CHAT2AUDIO_LLM_TOKENIZER"):
            async with started(server, tokenizer=str(tmp_path / "nowhere")):
                pass


@pytest.mark.asyncio
async def test_estimate_never_counts_fewer_than_the_tokenizer(tokenizer_dir: Path) -> None:
    texts = ["Hello there, how are you today? " * 20, "你好！今天过得怎么样？纳西妲在森林里。" * 20,
             "3.14159265358979 1234567890 !?!?!? ~~~", "🙂🚀 ünïcödé ÆØÅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 10, ""]
    with OpenAIStubServer(model_fields={"root": str(tokenizer_dir)}) as server:
        async with started(server) as exact, started(server, tokenizer="none") as estimate:
            for text in texts:
                messages = [ChatMessage("system", "You are Nahida."), ChatMessage("user", text)]
                assert estimate.count_tokens(messages) >= exact.count_tokens(messages)


@pytest.mark.asyncio
async def test_input_too_long_alone_is_refused_before_the_server_is_asked(tokenizer_dir: Path, tmp_path: Path) -> None:
    with OpenAIStubServer(model_fields={"max_model_len": 512, "root": str(tokenizer_dir)}) as server:
        async with scripted_service(
            tmp_path, llm_backend="openai", llm_base_url=server.base_url, llm_model="m", llm_max_new_tokens="100"
        ) as service:
            before = len(server.requests)
            with pytest.raises(InvalidInput, match="412 tokens"):
                await speak(service, "word " * 1000)
            assert len(server.requests) == before


@pytest.mark.asyncio
async def test_servers_context_length_error_is_the_clients(tmp_path: Path) -> None:
    """Without a tokenizer the estimate cannot be sure an input does not fit: the server is asked,
    and its 400 becomes a 4xx that says how long the prompt may be."""
    with OpenAIStubServer(model_fields={"max_model_len": 2048}) as server:
        async with started(server, "stub-400-context", tokenizer="none") as b:
            with pytest.raises(LLMError) as info:
                await collect(b, options=GenerationOptions(max_new_tokens=160))
            assert info.value.status == 400
            assert "context window of 2048 tokens" in str(info.value) and "may take 1888 tokens" in str(info.value)
        async with scripted_service(
            tmp_path, llm_backend="openai", llm_base_url=server.base_url, llm_model="stub-400-context",
            llm_max_new_tokens="160", llm_tokenizer="none",
        ) as service:
            with pytest.raises(LLMError) as info:
                await speak(service, "word " * 1000)  # the upper bound says no; only the server is sure
            assert server.requests[-1].path == "/v1/chat/completions"
        failure = as_service_error(info.value)  # what the client gets: its input's fault
        assert isinstance(failure, InvalidInput) and "2048 tokens" in failure.message


@pytest.mark.asyncio
async def test_window_named_in_the_error_is_learned() -> None:
    with OpenAIStubServer() as server:
        async with started(server, "stub-400-context") as b:
            assert b.context_tokens == DEFAULT_CONTEXT_TOKENS
            with pytest.raises(LLMError):
                await collect(b)
            assert (b.context_tokens, b.context_source) == (2048, "the server's error message")


@pytest.mark.asyncio
async def test_usage_counts_the_tokens_generated() -> None:
    pieces = len(split_pieces(DEFAULT_REPLY))
    with OpenAIStubServer(usage_tokens=pieces + 5) as server:
        async with started(server) as b:
            await collect(b)
            assert b.tokens_generated == pieces + 5  # the server's own count
            await collect(b, "stub-no-usage")
            assert b.tokens_generated == 2 * pieces + 5  # no usage: the pieces streamed


@pytest.mark.asyncio
async def test_hang_up_counts_what_was_streamed(backend: OpenAIBackend) -> None:
    backend._model = "stub-endless"
    stream = backend.stream_chat(MESSAGES, OPTIONS)
    for _ in range(5):
        await anext(stream)
    await stream.aclose()
    assert backend.tokens_generated == 5
