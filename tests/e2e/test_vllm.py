"""The `openai` LLM backend against a real vLLM: the CPU build in `.venv-vllm` (built by
`bash scripts/setup.sh --vllm`) serving the embedded SmolLM2 with a 2,048-token window, and the
service speaking its replies with the embedded eSpeak voice. Skipped where vLLM is not installed."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile

from chat2audio.settings import Settings, settings_from
from chat2audio.wiring import create_llm
from llm.embedded import embedded_gguf_path
from llm.transformers_backend import TransformersBackend
from tests.server import PROJECT_ROOT, Server, free_port, running_server, streamed_post

pytestmark = pytest.mark.vllm

VLLM_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "smollm2"  # not the path: the backend must find the tokenizer from /v1/models' root
WINDOW = 2048
MAX_NEW_TOKENS = 100
START_TIMEOUT_S = 420  # ~40-65 s measured on 2 busy cores; under pytest's 600 s, so that the log tail shows
WAV_HEADER_BYTES = 44
SPEAKER = "Aria"  # eSpeak: the LLM path is under test, the voice only has to be cheap
TOPICS = ["the harbour at dawn", "a lighthouse keeper's logbook", "the night market", "a storm at sea",
          "the old observatory", "a ferry that never sails", "the tide tables", "a lost compass",
          "the fishermen's songs", "a letter in a bottle"]


class VLLM(Server):
    """The vLLM server process (its address, process and log, as a service's)."""

    def metric(self, name: str) -> float:
        """One of vLLM's Prometheus values, summed over its labels."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        pattern = rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def _vllm_missing() -> str | None:
    """Why vLLM cannot run here, or None."""
    if not VLLM_PYTHON.exists():
        return "vLLM is not installed: no .venv-vllm (run `bash scripts/setup.sh --vllm`)"
    probe = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm"], capture_output=True, text=True, timeout=300, check=False
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"vllm does not import in .venv-vllm ({last}); rebuild it with `bash scripts/setup.sh --vllm`"
    return None


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    """The vLLM venv's interpreter; the module skips, saying why, where there is none that works."""
    if reason := _vllm_missing():
        pytest.skip(reason)
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The embedded GGUF as the HF directory the transformers backend converts it to (cached)."""
    backend = TransformersBackend(model_source=embedded_gguf_path(), cache_dir=Settings(_env_file=None).cache_dir)
    return backend._prepare_model_dir()


@pytest.fixture(scope="module")
def vllm(vllm_python: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLM]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "2",  # a fixed 2 GiB KV cache, not sized by vLLM
    }
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server",  # `vllm serve` trips on the repack's name
        "--model", str(smollm2_dir), "--served-model-name", SERVED_NAME, "--max-model-len", str(WINDOW),
        "--enforce-eager",  # no graph compilation at start: up in ~40 s here
        "--host", "127.0.0.1", "--port", str(port),
    ]
    with log_path.open("w") as log_file:
        # A session of its own: vLLM's engine runs in a child process, stopped with it.
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = VLLM(f"http://127.0.0.1:{port}", process, log_path)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}; its log ends:\n{_tail(server.log())}")
            try:
                if httpx.get(f"{server.base_url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"vLLM not up after {START_TIMEOUT_S} s; its log ends:\n{_tail(server.log())}")
            time.sleep(1)
        print(f"vLLM up in {time.monotonic() - started:.0f} s")
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # vLLM shuts its engine process down on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def service_env(vllm: VLLM, root: Path, **extra: str) -> dict[str, str]:
    return {
        "CHAT2AUDIO_LLM_BACKEND": "openai",
        "CHAT2AUDIO_LLM_BASE_URL": f"{vllm.base_url}/v1",
        "CHAT2AUDIO_LLM_MODEL": SERVED_NAME,
        "CHAT2AUDIO_LLM_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "CHAT2AUDIO_LLM_TIMEOUT_S": "120",
        "CHAT2AUDIO_MAX_INPUT_CHARS": "12000",
        "CHAT2AUDIO_MODELS_DIR": str(root / "models"),  # no GPT-SoVITS voice loads: only eSpeak's
        **extra,
    }


@pytest.fixture(scope="module")
def service(vllm: VLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The stream app, counting tokens with SmolLM2's own tokenizer (found via vLLM's /v1/models)."""
    root = tmp_path_factory.mktemp("service")
    with running_server("app_stream", service_env(vllm, root), root / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def estimating_service(vllm: VLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same without a tokenizer: prompt tokens by the upper-bound estimate."""
    root = tmp_path_factory.mktemp("estimating")
    env = service_env(vllm, root, CHAT2AUDIO_LLM_TOKENIZER="none")
    with running_server("app_stream", env, root / "server.log") as server:
        yield server


def speak(server: Server, text: str, **extra: object) -> httpx.Response:
    body = {"input": text, "speaker": SPEAKER, "temperature": 0, "max_new_tokens": MAX_NEW_TOKENS, **extra}
    return httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=300)


def seconds_of_speech(response: httpx.Response) -> float:
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
    return audio.size / rate


def long_turn(i: int) -> str:
    """~1,500 characters (~330 SmolLM2 tokens): ten of them with their replies outgrow 2,048."""
    topic = TOPICS[i % len(TOPICS)]
    sentences = [f"Let me tell you about {topic}, part {i + 1}, detail {j + 1}: the wind turned, the lamps were "
                 f"lit one by one, and somebody on the quay started counting the boats out loud." for j in range(12)]
    return " ".join(sentences) + f" What do you make of {topic}?"


@pytest.mark.asyncio
async def test_the_start_up_summary_shows_the_window_learned_from_vllm(
    vllm: VLLM, smollm2_dir: Path, tmp_path: Path
) -> None:
    llm = create_llm(settings_from(service_env(vllm, tmp_path)))
    await llm.start()
    try:
        summary = llm.describe()  # the start-up summary's LLM line
    finally:
        await llm.stop()
    assert "context 2048 tokens (the server's /models)" in summary
    assert f"counted by tokenizer {smollm2_dir}" in summary  # found where vLLM loaded the model from


def test_a_reply_streams_in_chunks(service: Server) -> None:
    payload = {"input": "Hello! Who are you, and what do you do here?", "speaker": SPEAKER, "max_new_tokens": 60}
    body, arrivals = streamed_post(service.base_url, "/chat2audio", payload, timeout=300)
    audio, rate = soundfile.read(io.BytesIO(body), dtype="float32")
    assert audio.size / rate > 1.0, "a spoken reply lasts more than a second"
    assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] > 0.05, "audio should arrive as it is made"


@pytest.mark.parametrize("fixture", ["service", "estimating_service"])
def test_ten_long_turns_of_one_session_outgrow_the_window_and_all_get_spoken(
    fixture: str, request: pytest.FixtureRequest, vllm: VLLM
) -> None:
    server: Server = request.getfixturevalue(fixture)
    session = f"long-{fixture}"
    prompts_before = vllm.metric("vllm:prompt_tokens_total")
    sent = 0
    for i in range(10):
        response = speak(server, long_turn(i), session_id=session)
        assert response.status_code == 200, f"turn {i + 1}: {response.status_code} {response.text[:300]}"
        assert seconds_of_speech(response) > 0.5, f"turn {i + 1} got no speech"
        sent += len(long_turn(i))
    # The turns alone are far beyond the window: history was trimmed, and every prompt fitted.
    assert sent / 4 > WINDOW
    prompts = vllm.metric("vllm:prompt_tokens_total") - prompts_before
    assert prompts <= 10 * (WINDOW - MAX_NEW_TOKENS)
    if fixture == "service":  # exact counts keep as much history as fits: most prompts are near full
        assert prompts > 6 * (WINDOW - MAX_NEW_TOKENS)


def test_an_input_too_long_alone_is_a_4xx_naming_the_limit_before_vllm_is_asked(service: Server, vllm: VLLM) -> None:
    requests_before = vllm.log().count("POST /v1/chat/completions")
    response = speak(service, "word " * 2400)  # ~2,400 tokens: more than the whole window
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"]
    assert f"{WINDOW - MAX_NEW_TOKENS} tokens" in message, message
    assert vllm.log().count("POST /v1/chat/completions") == requests_before


def test_an_input_too_long_alone_is_a_4xx_from_vllms_own_answer_without_a_tokenizer(
    estimating_service: Server,
) -> None:
    response = speak(estimating_service, "word " * 2400)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"]
    assert f"context window of {WINDOW} tokens" in message and f"{WINDOW - MAX_NEW_TOKENS} tokens" in message


def test_metrics_count_the_tokens_vllm_generated(service: Server, vllm: VLLM) -> None:
    def ours() -> float:
        text = httpx.get(f"{service.base_url}/metrics", timeout=10).text
        return float(re.search(r"^chat2audio_llm_tokens_total (\S+)$", text, re.MULTILINE).group(1))

    before, theirs_before = ours(), vllm.metric("vllm:generation_tokens_total")
    assert speak(service, "Tell me about the harbour.").status_code == 200
    generated = vllm.metric("vllm:generation_tokens_total") - theirs_before
    assert generated > 0 and ours() - before == generated  # vLLM's own count, from the stream's usage


def test_a_hang_up_aborts_vllms_request(service: Server, vllm: VLLM) -> None:
    payload = {"input": "Tell me a very long story about the sea, in at least twenty paragraphs.",
               "speaker": SPEAKER, "temperature": 0, "max_new_tokens": 1500}
    with httpx.stream("POST", f"{service.base_url}/chat2audio", json=payload, timeout=300) as response:
        assert response.status_code == 200
        chunks, heard = response.iter_raw(), 0
        while heard <= WAV_HEADER_BYTES:  # the header leaves before the LLM is asked: wait for speech
            heard += len(next(chunks))
        assert vllm.metric("vllm:num_requests_running") == 1, "the reply should still be generating"
        finished, generated = vllm.metric("vllm:request_success_total"), vllm.metric("vllm:generation_tokens_total")
    hung_up = time.monotonic()
    while vllm.metric("vllm:num_requests_running") > 0:
        assert time.monotonic() - hung_up < 2.0, "vLLM still generating 2 s after the client left"
        time.sleep(0.05)
    # Aborted, not finished: no request ended by stop or length (vLLM 0.32 leaves a client's abort
    # out of that count), far short of the 1,500 tokens asked for.
    assert vllm.metric("vllm:request_success_total") == finished
    assert vllm.metric("vllm:generation_tokens_total") - generated < 100
