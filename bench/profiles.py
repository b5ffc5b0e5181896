"""What a benchmark run is made of: the backends (as server settings and as in-process objects
built the same way) and the prompts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chat2audio.settings import PROJECT_ROOT, Settings, generation_defaults, settings_from
from chat2audio.speakers import SpeakerRegistry
from chat2audio.wiring import create_llm, create_tts
from llm.base import ChatMessage, GenerationOptions, LLMBackend
from tts.base import TTSEngine, VoiceParams


@dataclass
class Backends:
    """In-process twins of what the server runs, for the floor and the in-process pipeline."""

    llm: LLMBackend
    tts: TTSEngine
    voice: VoiceParams
    system_prompt: str  # as the server builds it: the persona, told its style tags
    options: GenerationOptions
    count_tokens: Callable[[str], int]
    llm_label: str
    tts_label: str
    styles: dict[str, VoiceParams] = field(default_factory=dict)

    def messages(self, text: str) -> list[ChatMessage]:
        return [ChatMessage("system", self.system_prompt), ChatMessage("user", text)]

    async def stop(self) -> None:
        await self.llm.stop()
        await self.tts.stop()


class Profile:
    name = ""
    title = ""
    speaker = ""
    prompts: list[tuple[str, str]] = []
    concurrency_prompt = ""
    tts_probe_text = ""
    llm_probe_text = ""
    max_new_tokens = 80

    def server_env(self, workdir: Path) -> dict[str, str]:
        raise NotImplementedError

    @staticmethod
    def settings(env: dict[str, str]) -> Settings:
        return settings_from(env)

    def request(self, text: str) -> dict:
        return {"input": text, "speaker": self.speaker, "temperature": 0, "max_new_tokens": self.max_new_tokens}

    async def start_in_process(self, env: dict[str, str]) -> Backends:
        """The backends the server runs with `env`, built the same way, in this process."""
        settings = self.settings(env)
        registry = SpeakerRegistry.scan(settings.speakers_dir, settings.prompts_dir)
        speaker = next(s for s in registry.all() if s.id == self.speaker)
        llm = create_llm(settings)
        await llm.start()
        tts = create_tts(speaker.engine, settings)
        await tts.start()
        options = speaker.generation.apply(generation_defaults(settings))
        request = self.request("")
        options = GenerationOptions(
            max_new_tokens=request["max_new_tokens"], temperature=request["temperature"],
            top_p=options.top_p, repetition_penalty=options.repetition_penalty,
        )
        return Backends(
            llm, tts, speaker.voice, speaker.role_prompt(settings.style_prompt, speaker.styles), options, self.token_counter(llm),
            llm_label=self.llm_label(settings), tts_label=speaker.engine, styles=speaker.styles,
        )

    def token_counter(self, llm: LLMBackend) -> Callable[[str], int]:
        tokenizer = getattr(llm, "_tokenizer", None)
        if tokenizer is None:
            from llm.scripted import _TOKEN

            return lambda text: len(_TOKEN.findall(text))
        return lambda text: len(tokenizer(text)["input_ids"])

    def llm_label(self, settings: Settings) -> str:
        return settings.llm_backend


EN_FIVE = (
    "The harbour is close by. Follow the lanterns down the hill. The ships wait there for us. "
    "Their sails are white and patched. We leave when the tide turns."
)
ZH_FIVE = "港口就在附近。沿着灯笼走下山坡。船在那里等着我们。它们的帆又白又旧。潮水一转我们就出发。"


class ScriptedProfile(Profile):
    """Backends of exactly known speed: the LLM writes a token every 20 ms, the TTS takes 0.1 × the
    audio's duration. What remains above the floor is the scheduler's own overhead."""

    name = "scripted"
    title = "Scripted backends (LLM: 1 token / 20 ms; TTS: 0.1 × real time)"
    speaker = "Tone"
    prompts = [
        ("en short (1 sentence)", "The harbour is close by, just past the old lighthouse."),
        ("en 5 sentences", EN_FIVE),
        ("en long (10 sentences)", EN_FIVE + " " + EN_FIVE),
        ("zh short (1 sentence)", "港口就在附近，就在老灯塔的后面。"),
        ("zh 5 sentences", ZH_FIVE),
        ("zh long (10 sentences)", ZH_FIVE + ZH_FIVE),
    ]
    concurrency_prompt = EN_FIVE
    tts_probe_text = EN_FIVE
    llm_probe_text = EN_FIVE
    max_new_tokens = 400

    def server_env(self, workdir: Path) -> dict[str, str]:
        speakers, prompts = workdir / "scripted-speakers", workdir / "scripted-prompts"
        speakers.mkdir(exist_ok=True)
        prompts.mkdir(exist_ok=True)
        (speakers / "Tone.toml").write_text('engine = "scripted"\n[voice]\nfrequency_hz = 330\n')
        (prompts / "Tone.md").write_text("You repeat what you are told.")
        return {
            "CHAT2AUDIO_SPEAKERS_DIR": str(speakers),
            "CHAT2AUDIO_PROMPTS_DIR": str(prompts),
            "CHAT2AUDIO_LLM_BACKEND": "scripted",
            "CHAT2AUDIO_TESTING__SCRIPTED_TOKEN_DELAY_S": "0.02",
            "CHAT2AUDIO_TESTING__SCRIPTED_TTS_RTF": "0.1",
            "CHAT2AUDIO_MAX_CONCURRENT_REQUESTS": "8",
        }


class EmbeddedProfile(Profile):
    """The embedded default: SmolLM2-135M-Instruct (transformers, CPU) + eSpeak NG, greedy decoding."""

    name = "embedded"
    title = "Embedded default (SmolLM2-135M-Instruct + eSpeak NG), greedy, ≤ 80 new tokens"
    speaker = "Aria"
    prompts = [
        ("en short", "Say hello in one short sentence."),
        ("en medium", "Hello, who are you?"),
        ("en long", "Describe your town, its harbour and the people who live there."),
        ("zh short", "你好！"),
        ("zh medium", "做个自我介绍吧"),
        ("zh long", "请详细介绍一下你的家乡和那里的人们。"),
    ]
    concurrency_prompt = "Hello, who are you?"
    tts_probe_text = EN_FIVE
    llm_probe_text = "Tell me a short story about the sea."

    def server_env(self, workdir: Path) -> dict[str, str]:
        return {"CHAT2AUDIO_SPEAKERS_DIR": str(PROJECT_ROOT / "speakers")}

    def llm_label(self, settings: Settings) -> str:
        return "transformers: SmolLM2-135M-Instruct (embedded GGUF)"


class TinyQwenProfile(Profile):
    """The transformers backend on a tiny random Qwen2 in Qwen2.5's on-disk format (built by the
    test fixture), speaking through the scripted TTS: the in-process LLM path's own overheads."""

    name = "tiny-qwen"
    title = "transformers backend on a tiny random Qwen2 (test fixture) + scripted TTS, greedy, 80 new tokens"
    speaker = "Tone"
    prompts = [("en", "Hello, who are you?"), ("zh", "做个自我介绍吧")]
    concurrency_prompt = "Hello, who are you?"
    tts_probe_text = EN_FIVE
    llm_probe_text = "Tell me a short story about the sea."

    def server_env(self, workdir: Path) -> dict[str, str]:
        from tests.fixtures.tiny_qwen2 import build_tiny_qwen2

        model = workdir / "tiny-qwen2"
        if not (model / "config.json").exists():
            build_tiny_qwen2(model, seed=0)
        env = ScriptedProfile().server_env(workdir)
        return env | {"CHAT2AUDIO_LLM_BACKEND": "transformers", "CHAT2AUDIO_LLM_MODEL": str(model), "CHAT2AUDIO_DEVICE": "cpu"}

    def llm_label(self, settings: Settings) -> str:
        return "transformers: tiny random Qwen2 (2 layers, hidden 64)"


class TinyVoiceProfile(Profile):
    """The GPT-SoVITS engine on the tiny random voice of the test fixtures (real formats, 32 kHz),
    fed by the scripted LLM: its tiny BERT only knows the fixture's sentences, so the LLM says
    those. The engine's own latency, free of LLM noise."""

    name = "tiny-voice"
    title = "GPT-SoVITS on the tiny random voice (test fixture), scripted LLM (1 token / 20 ms)"
    speaker = "Tiny"
    concurrency_prompt = ""
    max_new_tokens = 400

    def __init__(self) -> None:
        from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS

        self.prompts = [
            ("zh 1 sentence", SPOKEN_TEXTS[0]),
            ("zh 2 sentences", SPOKEN_TEXTS[0] + SPOKEN_TEXTS[1]),
            ("zh 3 sentences", "".join(SPOKEN_TEXTS[:3])),
        ]
        self.concurrency_prompt = SPOKEN_TEXTS[0] + SPOKEN_TEXTS[1]
        self.tts_probe_text = SPOKEN_TEXTS[1]
        self.llm_probe_text = SPOKEN_TEXTS[2]

    def server_env(self, workdir: Path) -> dict[str, str]:
        from tests.fixtures.tiny_gpt_sovits import build_tiny_gpt_sovits_models, write_speaker_toml

        models = workdir / "tiny-gsv"
        if not (models / "sv").exists():
            build_tiny_gpt_sovits_models(models, seed=1234, speaker_names=("TinyA",))
        env = ScriptedProfile().server_env(workdir)
        # Greedy and noiseless, so the server and the in-process twin make the same audio.
        write_speaker_toml(
            Path(env["CHAT2AUDIO_SPEAKERS_DIR"]), "TinyA", speaker_id="Tiny", prompt="Tone", top_k=1, noise_scale=0.0
        )
        return env | {"CHAT2AUDIO_MODELS_DIR": str(models), "CHAT2AUDIO_DEVICE": "cpu"}


class FullVoiceProfile(Profile):
    """GPT-SoVITS on a full-size random-weight voice (the released models' shapes, built once under
    the user cache dir by `tests.fixtures.full_gpt_sovits`), fed by the scripted LLM: what a real
    voice costs. Its section is its own (`bench.full_voice`): per sentence in-process, for each TTS
    precision, with gsv_tts and Genie-TTS as anchors; N concurrent streams through the stream app."""

    name = "full-voice"
    title = "GPT-SoVITS on the full-size random voice (released shapes), scripted LLM (1 token / 20 ms)"
    speaker = "Full"
    max_new_tokens = 400
    concurrency = [1, 2, 4]
    whole_runs = False  # True: each sentence of ours also unstreamed (RTF whole); doubles their time

    def __init__(self) -> None:
        from bench.full_voice import sentences
        from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS

        self.sentences = sentences()
        self.concurrency_prompt = SPOKEN_TEXTS[0] + SPOKEN_TEXTS[1]

    def server_env(self, workdir: Path) -> dict[str, str]:
        from bench.full_voice import BUDGET_SETTING, TOKENS_PER_PHONE
        from tests.fixtures.full_gpt_sovits import SPEAKER, full_size_models
        from tests.fixtures.tiny_gpt_sovits import write_speaker_toml

        env = ScriptedProfile().server_env(workdir)
        write_speaker_toml(
            Path(env["CHAT2AUDIO_SPEAKERS_DIR"]), SPEAKER, speaker_id="Full", prompt="Tone", top_k=1, noise_scale=0.0
        )
        return env | {
            "CHAT2AUDIO_MODELS_DIR": str(full_size_models()), "CHAT2AUDIO_DEVICE": "cpu",
            BUDGET_SETTING: str(TOKENS_PER_PHONE),  # a random GPT never stops: as many tokens as real speech
        }

    @staticmethod
    def genie_cache_dir(models_dir: Path) -> Path:
        """Genie's converted models and data, kept next to the models dir they come from."""
        return models_dir.with_name(f"genie-{models_dir.name}")


class ConfiguredProfile(Profile):
    """Whatever this shell's CHAT2AUDIO_* variables configure (real weights, a GPU, a vLLM
    server), speaking as BENCH_SPEAKER (default Nahida)."""

    name = "configured"
    prompts = [
        ("zh short", "你好！"),
        ("zh medium", "做个自我介绍吧"),
        ("zh long", "给我讲讲你最难忘的一次冒险吧。"),
        ("en medium", "Hello, who are you?"),
    ]
    concurrency_prompt = "做个自我介绍吧"
    tts_probe_text = ZH_FIVE
    llm_probe_text = "给我讲一个关于大海的小故事。"

    def __init__(self) -> None:
        import os

        self.speaker = os.environ.get("BENCH_SPEAKER", "Nahida")
        self.title = f"Configured backends (CHAT2AUDIO_* of this shell), speaker {self.speaker}"

    def server_env(self, workdir: Path) -> dict[str, str]:
        import os

        return {key: value for key, value in os.environ.items() if key.startswith("CHAT2AUDIO_")}

    def llm_label(self, settings: Settings) -> str:
        return f"{settings.llm_backend}: {settings.llm_model or 'embedded'}"


PROFILES: dict[str, Callable[[], Profile]] = {
    "scripted": ScriptedProfile,
    "embedded": EmbeddedProfile,
    "tiny-qwen": TinyQwenProfile,
    "tiny-voice": TinyVoiceProfile,
    "full-voice": FullVoiceProfile,
    "configured": ConfiguredProfile,
}
