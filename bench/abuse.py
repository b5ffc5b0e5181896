"""`python -m bench.soak --abuse`: while ordinary listeners hear replies, a second client sends
each abusive request of issue 19 in turn; per request, what it was answered, the listeners' worst
stall (seconds their player had nothing to play), whether any of their replies failed, and the
worst latency of `/health` meanwhile. Targets: every stall < 0.5 s, no failure.

The listeners ask `/chat2audio` for `format: events` (one event per sentence with its audio), so
a failure is an `error` event, not a stream that merely ends, and their player is simulated from
each sentence's arrival and length. On the embedded default (SmolLM2 + eSpeak) by default; a
scripted speaker `Fragile` (fails on "POISON") lets a speech stream fail midway.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.server import Server, running_server

KEY = "abuse-bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SEND_TIMEOUT_S = 5  # the bench server's CHAT2AUDIO_SEND_TIMEOUT_S: the silent client's case waits it out
MAX_INPUT_CHARS = 4096
STALL_TARGET_S = 0.5
ABUSE_TIMEOUT_S = 60  # an abusive request still unanswered by then is reported as a client timeout
QUESTIONS = [  # two sentences each: a scripted (echo) reply has a second sentence to stall on
    "Tell me about the harbour at night. What do the sailors sing there?",
    "What do you like to eat? Is there a dish from your town you would share?",
    "Describe the lighthouse for me. Who keeps its lamp burning?",
    "Where should I travel next spring? I would like to see the mountains.",
    "What is your favourite song? Can you hum a little of it for me?",
    "How do the ships find their way? Do they follow the stars at night?",
]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# -- the ordinary listeners ---------------------------------------------------------------------------


@dataclass
class Listeners:
    """`count` clients asking for replies one after another until stopped; each records its
    player's stalls (when, how long) and its failed replies (when, what)."""

    base_url: str
    count: int
    speakers: tuple[str, ...]
    stalls: list[tuple[float, float]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    replies: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.count):
            thread = threading.Thread(target=self._listen, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def worst_stall(self, since: float, until: float) -> float:
        return max((stall for at, stall in self.stalls if since <= at <= until), default=0.0)

    def failed(self, since: float, until: float) -> list[str]:
        return [what for at, what in self.failures if since <= at <= until]

    def _listen(self, n: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120, headers=AUTH) as client:
            turn = 0
            while not self._stop.is_set():
                body = {"input": QUESTIONS[(n + turn) % len(QUESTIONS)], "speaker": self.speakers[n % len(self.speakers)],
                        "format": "events"}
                turn += 1
                try:
                    self._one_reply(client, body)
                except httpx.HTTPError as error:
                    self.failures.append((time.monotonic(), f"{type(error).__name__}"))

    def _one_reply(self, client: httpx.Client, body: dict) -> None:
        empties_at: float | None = None  # when the simulated player runs out of audio
        with client.stream("POST", "/chat2audio", json=body) as response:
            if response.status_code != 200:
                response.read()
                self.failures.append((time.monotonic(), f"{response.status_code}: {response.text[:120]}"))
                return
            last = None
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event, now = json.loads(line[6:]), time.monotonic()
                last = event["type"]
                if last == "sentence" and event["audio_seconds"] > 0:
                    if empties_at is not None and now > empties_at:
                        self.stalls.append((now, now - empties_at))
                    empties_at = max(empties_at or now, now) + event["audio_seconds"]
                elif last == "error":
                    self.failures.append((now, f"error event: {event['error']['message'][:120]}"))
        if last not in ("done", "error"):
            self.failures.append((time.monotonic(), f"stream ended after {last!r}"))
        self.replies += 1


class HealthWatch:
    """Polls /health every 50 ms; records (when, latency)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def worst(self, since: float, until: float) -> float:
        return max((latency for at, latency in self.latencies if since <= at <= until), default=0.0)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    client.get("/health")
                except httpx.HTTPError:
                    pass
                self.latencies.append((started, time.monotonic() - started))
                time.sleep(0.05)


# -- the abusive requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    item: str  # the item number(s)
    name: str
    send: Callable[[str, Server], str]  # (base_url, the running server) -> what it was answered


def _post(base_url: str, path: str, body: dict | str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{base_url}{path}", content=content, timeout=ABUSE_TIMEOUT_S,
                      headers={**AUTH, "Content-Type": "application/json", **headers})


def _answer(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    try:
        error = response.json()
        message = error.get("message") or error["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    return f"{response.status_code}: {message[:70]}"


def tiny_temperature(base_url: str, server) -> str:
    return _answer(_post(base_url, "/chat2audio", {"input": "Say something.", "speaker": "Aria", "temperature": 8e-38,
                                                    "format": "text"}))


def many_messages(base_url: str, server) -> str:
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": "x"} for n in range(1700)] + \
        [{"role": "user", "content": "Hi"}]
    return _answer(_post(base_url, "/v1/chat/completions", {"model": "Aria", "messages": messages}))


def long_allowed_chat(base_url: str, server) -> str:
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n}"} for n in range(498)] + \
        [{"role": "user", "content": "And now?"}]
    return _answer(_post(base_url, "/v1/chat/completions", {"model": "Aria", "messages": messages, "max_tokens": 20}))


def long_system_prompt(base_url: str, server) -> str:
    system = "You are a patient guide who speaks in short sentences. " * 55  # ~3 KB
    body = {"model": "Aria", "max_tokens": 30, "messages": [{"role": "system", "content": system},
                                                             {"role": "user", "content": "Hello!"}]}
    return _answer(_post(base_url, "/v1/chat/completions", body))


def silent_socket(base_url: str, server) -> str:
    """A long speech whose client never reads (the smallest receive buffer): after the send
    bound, the server must have abandoned it (its log says so) and freed its slot."""
    host, port = base_url.removeprefix("http://").split(":")
    text = " ".join(f"This is sentence number {n} of a very long text to speak." for n in range(70))[:MAX_INPUT_CHARS]
    payload = json.dumps({"input": text, "voice": "Aria", "response_format": "wav"}).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect((host, int(port)))
        sock.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        deadline = time.monotonic() + 60
        sock.settimeout(5)
        head = sock.recv(1024).decode("latin-1")
        request_id = (re.search(r"x-request-id: (\w+)", head, re.I) or [None, "?"])[1]
        while time.monotonic() < deadline:
            if f"request {request_id} abandoned" in server.log():
                return f"abandoned {SEND_TIMEOUT_S} s after its window filled; slot freed"
            time.sleep(0.5)
    return "still held after 60 s"


def markup_flood(base_url: str, server) -> str:
    floods = ["(" * MAX_INPUT_CHARS, "<b></b>" * (MAX_INPUT_CHARS // 7), "*" * MAX_INPUT_CHARS, "[" * MAX_INPUT_CHARS,
              " " * MAX_INPUT_CHARS, "<i>*(" * (MAX_INPUT_CHARS // 5), "-" * MAX_INPUT_CHARS, "\n" * MAX_INPUT_CHARS]

    def speak(text: str) -> str:
        response = _post(base_url, "/v1/audio/speech", {"input": text, "voice": "Aria", "response_format": "wav"})
        return f"{response.status_code}" + ("" if response.status_code != 200 or len(response.content) > 44 else " empty")

    with ThreadPoolExecutor(len(floods)) as pool:
        answers = list(pool.map(speak, floods))
    return "8 × 4,096 chars: " + ", ".join(f"{answers.count(a)}× {a}" for a in sorted(set(answers)))


def sse_speech_failure(base_url: str, server) -> str:
    body = {"input": "This first sentence is fine and long enough. Then POISON comes in the second one.",
            "voice": "Fragile", "stream_format": "sse", "response_format": "pcm"}
    response = _post(base_url, "/v1/audio/speech", body)
    types = [json.loads(line[6:])["type"] for line in response.text.splitlines() if line.startswith("data: ")]
    return f"{response.status_code}, ends with {types[-1] if types else 'nothing'}"


def docs_without_key(base_url: str, server) -> str:
    answers = [f"{path} {httpx.get(f'{base_url}{path}', timeout=30).status_code}" for path in ("/docs", "/redoc", "/openapi.json")]
    return ", ".join(answers) + f"; / {httpx.get(base_url + '/', timeout=30).status_code}"


def cross_site_get(base_url: str, server) -> str:
    params = {"text": "Hello there.", "text_lang": "en", "ref_audio_path": "Aria.wav", "prompt_lang": "en"}
    evil = httpx.get(f"{base_url}/gsv/tts", params=params, headers={**AUTH, "Origin": "https://evil.example"}, timeout=30)
    labelled = httpx.get(f"{base_url}/gsv/tts", params=params, headers={**AUTH, "Sec-Fetch-Site": "cross-site"}, timeout=30)
    return f"Origin: {evil.status_code}, Sec-Fetch-Site: {labelled.status_code}"


def deep_json(base_url: str, server) -> str:
    nested = "[" * 10000 + "]" * 10000
    with httpx.Client(base_url=base_url, headers={**AUTH, "Content-Type": "application/json"}, timeout=30) as client:
        answers = [f"{path} {client.post(path, content=nested).status_code}" for path in ("/gsv/tts", "/gsv", "/chat2audio", "/v1/chat/completions")]
    return ", ".join(answers)


def emoji_input(base_url: str, server) -> str:
    emoji = _post(base_url, "/v1/audio/speech", {"input": "😀🎉" * 100, "voice": "Aria"})
    invisible = _post(base_url, "/v1/audio/speech", {"input": "\u200b\u200d" * 100, "voice": "Aria"})
    return f"emoji {emoji.status_code}, zero-width {invisible.status_code}"


def input_limits(base_url: str, server) -> str:
    speech = _post(base_url, "/v1/audio/speech", {"input": "a" * (MAX_INPUT_CHARS + 1), "voice": "Aria"})
    chat = _post(base_url, "/v1/chat/completions", {"model": "Aria", "messages": [
        {"role": "system", "content": "s" * (MAX_INPUT_CHARS + 1)}, {"role": "user", "content": "Hi"}]})
    return f"speech {speech.status_code}, first chat message {chat.status_code}"


def plain_chat(base_url: str, server) -> str:
    """Not abusive: an ordinary chat completion, to tell a case's own harm from what any new
    reply's prompt costs the others (the LLM's prefill, item 3)."""
    body = {"model": "Aria", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 30}
    return _answer(_post(base_url, "/v1/chat/completions", body))


def openai_parameters(base_url: str, server) -> str:
    messages = [{"role": "user", "content": "Hello!"}]
    n2 = _post(base_url, "/v1/chat/completions", {"model": "Aria", "messages": messages, "n": 2})
    seeded = _post(base_url, "/v1/chat/completions", {"model": "Aria", "messages": messages, "seed": 7, "stop": ["."],
                                                       "top_p": 0.5, "max_tokens": 30})
    return f"n=2 {n2.status_code}, seed+stop+top_p {seeded.status_code}"


BASELINE_S = 8.0


def baseline(base_url: str, server) -> str:
    """No abuse: the listeners' own stalls on this machine, to read the others against."""
    time.sleep(BASELINE_S)
    return "-"


CASES = [  # the LLM engine's own cases (items 1 and 3) last: their harm outlasts their request
    Case("", "none (baseline)", baseline),
    Case("2", "1,701-message chat", many_messages),
    Case("4", "client that never reads", silent_socket),
    Case("5", "8 × 4,096 chars of markup", markup_flood),
    Case("6", "SSE speech failing midway", sse_speech_failure),
    Case("7", "docs without the key", docs_without_key),
    Case("8", "cross-site GET /gsv/tts", cross_site_get),
    Case("9", "deeply nested JSON", deep_json),
    Case("9", "emoji / zero-width speech", emoji_input),
    Case("9", "input limits", input_limits),
    Case("", "ordinary chat completion (control for 10)", plain_chat),
    Case("10", "n=2; seed, stop, top_p", openai_parameters),
    Case("1", "temperature 8e-38", tiny_temperature),
    Case("3", "3 KB system prompt", long_system_prompt),
    Case("2, 3", "499-message chat (allowed; a long prefill)", long_allowed_chat),
]


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: Case
    answer: str
    seconds: float
    worst_stall_s: float
    failures: list[str]
    health_worst_s: float

    @property
    def ok(self) -> bool:
        return self.worst_stall_s < STALL_TARGET_S and not self.failures


def run_cases(base_url: str, server, listeners: Listeners, health: HealthWatch, cases: list[Case],
              *, settle_s: float = 1.0) -> list[CaseResult]:
    """Each case in turn while the listeners listen; a case's window runs from its request to
    `settle_s` after its answer (its harm may come just after)."""
    results = []
    for case in cases:
        started = time.monotonic()
        try:
            answer = case.send(base_url, server)
        except Exception as error:  # a bench reports; one broken case must not end the run
            answer = f"client error: {type(error).__name__}: {str(error)[:60]}"
        answered = time.monotonic()
        time.sleep(settle_s)
        until = time.monotonic()
        results.append(CaseResult(case, answer, answered - started, listeners.worst_stall(started, until),
                                  listeners.failed(started, until), health.worst(started, until)))
    return results


def table(results: list[CaseResult]) -> str:
    rows = ["| item | abusive request | answered | took | listeners' worst stall | listener failures | /health worst |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        failures = f"{len(r.failures)}: {r.failures[0][:60]}" if r.failures else "0"
        mark = "" if r.ok else " ✗"
        rows.append(f"| {r.case.item} | {r.case.name} | {r.answer.replace('|', '/')} | {r.seconds:.1f} s | "
                    f"{r.worst_stall_s:.2f} s{mark} | {failures} | {r.health_worst_s:.3f} s |")
    return "\n".join(rows)


def abuse_env(root: Path, *, backend: str) -> dict[str, str]:
    """The embedded speakers (Aria, Orion) plus a scripted `Fragile` that fails on "POISON", with
    an API key and a short send bound. `scripted`: scripted LLM and tones instead (quick runs)."""
    speakers, prompts = root / "speakers", root / "prompts"
    speakers.mkdir(parents=True)
    prompts.mkdir(parents=True)
    for name in ("Aria", "Orion"):
        shutil.copy(PROJECT_ROOT / "speakers" / f"{name}.toml", speakers)
        shutil.copy(PROJECT_ROOT / "prompts" / f"{name}.md", prompts)
    (speakers / "Fragile.toml").write_text('engine = "scripted"\n[voice]\nfrequency_hz = 440\nfail_on = "POISON"\n')
    (prompts / "Fragile.md").write_text("You are Fragile.")
    env = {
        "CHAT2AUDIO_SPEAKERS_DIR": str(speakers), "CHAT2AUDIO_PROMPTS_DIR": str(prompts),
        "CHAT2AUDIO_API_KEY": KEY, "CHAT2AUDIO_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
        "CHAT2AUDIO_MAX_INPUT_CHARS": str(MAX_INPUT_CHARS),
    }
    if backend == "scripted":
        env |= {"CHAT2AUDIO_LLM_BACKEND": "scripted", "CHAT2AUDIO_TESTING__SCRIPTED_TOKEN_DELAY_S": "0.02"}
    return env


def abuse(app: str, *, backend: str = "embedded", listeners: int = 4, cases: list[Case] | None = None) -> tuple[str, bool]:
    """Start a server, let `listeners` listen, send every case; the markdown report and whether
    every case met the targets."""
    with tempfile.TemporaryDirectory(prefix="chat2audio-abuse-") as tmp:
        env = abuse_env(Path(tmp), backend=backend)
        with running_server(app, env, Path(tmp) / "server.log") as server:
            crowd = Listeners(server.base_url, listeners, ("Aria", "Orion"))
            with HealthWatch(server.base_url) as health:
                crowd.start()
                time.sleep(3)  # the listeners are listening
                started = time.perf_counter()
                results = run_cases(server.base_url, server, crowd, health, cases or CASES)
                crowd.stop()
    header = (f"## Abuse: {app}, {backend} backends, {listeners} listeners, {crowd.replies} replies heard, "
              f"{time.perf_counter() - started:.0f} s\n\n")
    return header + table(results), all(r.ok for r in results)
