"""Typed service configuration, read once at start-up from `CHAT2AUDIO_*` variables or `.env`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chat2audio.runtime.cores import CoreShare
from llm.base import GenerationOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class TestingSettings(BaseModel):
    """Knobs for tests and benchmarks only (`CHAT2AUDIO_TESTING__<NAME>`); never needed to serve."""

    scripted_token_delay_s: float = Field(0.02, ge=0, description="speed of the scripted LLM")
    scripted_tts_rtf: float = Field(0.1, ge=0, description="real-time factor of the scripted TTS")
    pipeline_mode: Literal["overlapped", "sequential"] = Field(
        "overlapped", description="sequential = the original design (whole reply, then speech); for benchmarks"
    )
    tts_scheduling: Literal["deadline", "fifo"] = Field(
        "deadline", description="fifo = sentences synthesized in the order they come (before deadlines); for benchmarks"
    )
    gpt_sovits_tokens_per_phone: float | None = Field(
        None, gt=0,
        description="GPT-SoVITS token budget per phoneme (unset: the engine's 6). A random-weight GPT never says "
        "EOS, so tests and benchmarks set ~3, a real voice's rate, to get speech of a real length",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHAT2AUDIO_", env_file=PROJECT_ROOT / ".env", extra="ignore", env_nested_delimiter="__"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    speakers_dir: Path = PROJECT_ROOT / "speakers"
    prompts_dir: Path = PROJECT_ROOT / "prompts"
    models_dir: Path = PROJECT_ROOT / "models"
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "chat2audio",
        description="Where converted models are cached (the embedded GGUF → HF conversion).",
    )

    llm_backend: Literal["transformers", "openai", "scripted"] = "transformers"
    llm_model: str | None = Field(
        None, description="HF model dir or .gguf (transformers) or model name (openai); unset = embedded"
    )
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = Field(60.0, gt=0)
    # The defaults are GenerationOptions' own: one place says what a reply is generated with.
    llm_max_new_tokens: int = Field(GenerationOptions.max_new_tokens, ge=1, le=8192)
    llm_temperature: float = Field(GenerationOptions.temperature, ge=0.0, le=5.0)
    llm_top_p: float = Field(GenerationOptions.top_p, gt=0.0, le=1.0)
    llm_repetition_penalty: float = Field(GenerationOptions.repetition_penalty, ge=0.5, le=3.0)
    llm_max_batch: int | None = Field(
        None, ge=1, le=64,
        description="replies the in-process LLM decodes together (continuous batching); 1 = one at a time. "
        "Unset: CHAT2AUDIO_MAX_CONCURRENT_REQUESTS",
    )
    tts_max_batch: int | None = Field(
        None, ge=1, le=64,
        description="sentences GPT-SoVITS decodes together (batched synthesis); 1 = one at a time. "
        "Unset: CHAT2AUDIO_MAX_CONCURRENT_REQUESTS",
    )
    llm_context_tokens: int | None = Field(
        None,
        ge=64,
        description="the model's context window; history is trimmed to fit it. Set, it wins over what the model "
        "or server says. Unset: the local model's own; for openai, what the server publishes (vLLM's /v1/models "
        "max_model_len, llama.cpp's /props n_ctx), else 4096",
    )
    llm_tokenizer: str | None = Field(
        None,
        description="openai: a local copy of the served model's tokenizer (HF dir; relative: under models_dir), "
        "to count prompt tokens exactly; 'none' = never load one. Unset: the directory the server says it loaded "
        "the model from (vLLM's /v1/models root) or CHAT2AUDIO_LLM_MODEL, if either is on this machine or in the "
        "local hub cache; else an upper-bound estimate (one token per UTF-8 byte)",
    )
    trust_remote_code: bool = False

    stt_backend: Literal["none", "transformers", "openai"] = Field(
        "none", description="speech-to-text for voice input: a local Whisper dir, or a remote server"
    )
    stt_model: str | None = Field(None, description="Whisper dir (relative: under models_dir) or remote model name")
    stt_base_url: str | None = None
    stt_api_key: str | None = None
    stt_max_audio_seconds: float = Field(60.0, gt=0)
    stt_language: str | None = Field(None, description="language spoken to the service; unset = detect")
    max_upload_bytes: int = Field(10 * 2**20, ge=1024, description="largest accepted voice upload")

    device: str = "auto"
    llm_precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="the in-process LLM's linear weights: auto = int8 for decode steps (bf16 for prompts) on a CPU "
        "with AVX512-BF16 or AMX, else as loaded; fp32 = as loaded (float32 on a CPU, bf16/fp16 on CUDA)",
    )
    tts_precision: Literal["auto", "fp32", "bf16", "int8", "fp16"] = Field(
        "auto",
        description="GPT-SoVITS weights' precision: auto = the fastest faithful one the device supports "
        "(CUDA: fp16; CPU with AVX512-BF16 or AMX: int8 GPT decode, bf16 BERT and vocoder; other CPUs: fp32)",
    )
    tts_chunk_pacing: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="GPT-SoVITS streamed chunks: adaptive = sized by the engine's measured speed and the listener's "
        "buffer (no running dry on a slower or busy machine); fixed = always the same chunk ends, so the same "
        "request gives the same samples (but a machine slower than a 2-core Zen 4 may run dry)",
    )
    torch_threads: int | None = Field(
        None, ge=1,
        description="intra-op threads of each in-process torch engine (the LLM, GPT-SoVITS). Unset: every core "
        "while one engine computes, an equal share while several compute at once",
    )
    tts_cache_size: int = Field(
        2, ge=1, description="idle GPT-SoVITS voices kept loaded (LRU); voices of running replies are never evicted"
    )

    max_input_chars: int = Field(
        2000, ge=1, description="longest text accepted: /chat2audio's input, each chat message, a text to speak"
    )
    max_messages: int = Field(
        500, ge=1, description="most messages one /v1/chat/completions request may send (400 beyond)"
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    # 8: on 2 CPU cores the embedded LLM decodes 8 replies together at ~3.5x the tokens/s of one
    # (bench: N = 8 at once), each still faster than eSpeak speaks; a GPU takes more (set it higher).
    max_concurrent_requests: int = Field(8, ge=1)
    max_queued_requests: int = Field(16, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a running slot or a session's turn (503 after)")
    max_waiting_turns: int = Field(2, ge=0, description="turns of one session that may wait for it (429 beyond)")
    request_timeout_s: float = Field(300.0, gt=0, description="a reply taking longer fails with 504")
    send_timeout_s: float = Field(
        30.0, gt=0, description="longest a response waits for a client that stopped reading before it is abandoned"
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="on SIGTERM, in-flight replies get this long")
    sentence_queue_size: int = Field(4, ge=1)
    session_max_turns: int = Field(10, ge=0, description="user+assistant exchanges remembered per session")
    session_ttl_s: float = Field(1800.0, gt=0, description="idle sessions are forgotten after this long")
    max_sessions: int = Field(10000, ge=1)
    session_store: Literal["memory", "redis"] = "memory"
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="session store shared by replicas")
    session_store_timeout_s: float = Field(5.0, gt=0, description="longest wait for the session store")

    translation_prompt: str = Field(
        "Translate the user's text from {source} into {target}. Reply with the translation only, "
        "nothing else.",
        description="system prompt of the per-sentence translation step ({source}, {target} filled in)",
    )

    style_prompt: str = Field(
        "Your voice can carry a mood. To say a sentence in one, start it with its tag, one of: {tags}. "
        "The mood holds until the next tag. Use a tag only where your mood changes.",
        description="added to the role prompt of speakers with styles ({tags} filled in, e.g. \"[happy], [sad]\")",
    )

    openai_default_voice: str = Field(
        "Aria",
        description="the speaker that OpenAI's stock voice names (alloy, nova, …) map to when no speaker file "
        "claims them in openai_voices; empty: stock names are unknown voices",
    )

    api_key: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values accepted (DNS-rebinding guard); unset: loopback names and the bind "
        "address, or any host when bound to 0.0.0.0/::",
    )
    log_level: str = "info"

    testing: TestingSettings = Field(default_factory=TestingSettings)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("speakers_dir", "prompts_dir", "models_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Relative paths mean relative to the project, never to wherever the server was started.
        value = value.expanduser()
        return value if value.is_absolute() else PROJECT_ROOT / value

    _core_share: CoreShare | None = PrivateAttr(None)

    @property
    def llm_batch_size(self) -> int:
        """Replies the in-process LLM decodes together: every running reply, unless configured."""
        return self.llm_max_batch or self.max_concurrent_requests

    @property
    def request_life_s(self) -> float:
        """The longest any request may live: its wait for a slot, its reply, and one stalled send."""
        return self.queue_timeout_s + self.request_timeout_s + self.send_timeout_s

    @property
    def tts_batch_size(self) -> int:
        """Sentences GPT-SoVITS decodes together: one per running reply, unless configured."""
        return self.tts_max_batch or self.max_concurrent_requests

    def core_share(self) -> CoreShare:
        """The cores this service's torch engines share: one per settings, so per app."""
        if self._core_share is None:
            self._core_share = CoreShare(fixed=self.torch_threads)
        return self._core_share

    def model_path(self, value: str) -> Path:
        """A model named in the configuration: a relative path lies under the models dir."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.models_dir / path


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings from `CHAT2AUDIO_*` variables given as a mapping instead of the process
    environment (tests and benchmarks build a server's configuration this way)."""
    fields: dict[str, Any] = {}
    for key, value in env.items():
        name = key.removeprefix("CHAT2AUDIO_").lower()
        group, _, field = name.partition("__")
        if field:
            fields.setdefault(group, {})[field] = value
        else:
            fields[name] = value
    return Settings(**fields)


def generation_defaults(settings: Settings) -> GenerationOptions:
    """The configured generation settings, before a speaker's `[llm]` table or a request's overrides."""
    return GenerationOptions(
        max_new_tokens=settings.llm_max_new_tokens, temperature=settings.llm_temperature,
        top_p=settings.llm_top_p, repetition_penalty=settings.llm_repetition_penalty,
    )
