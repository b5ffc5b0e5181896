"""OpenAI's wire protocol, the parts this server speaks: the speech and chat-completions request
bodies and the error shape (see chat2audio/http/openai_api.py for the routes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from chat2audio.errors import InvalidInput
from chat2audio.protocol.chat import ChatOptions
from llm.base import ChatMessage

SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # accepted; every one is our TTS
CHAT_MODEL = "chat2audio"
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
PCM_RATE = 24000  # OpenAI's `pcm` / `pcm16`: headerless s16le mono at 24 kHz


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


# -- requests ------------------------------------------------------------------------------------


class VoiceRef(BaseModel):
    id: str = Field(min_length=1, max_length=64)


Voice = Annotated[str, Field(min_length=1, max_length=64)] | VoiceRef


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body. Unknown fields are ignored: the SDK adds new ones."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("tts-1", description="Any value; every model is this server's TTS.")
    input: str = Field(min_length=1, description="The text to speak, verbatim; at most CHAT2AUDIO_MAX_INPUT_CHARS characters.")
    voice: Voice = Field(description="A speaker id (GET /v1/audio/voices) or an OpenAI voice name mapped to one.")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Scales the voice's own speed, within what its engine allows.")
    instructions: str | None = Field(None, max_length=4096, description="Accepted; these voices cannot follow them.")
    stream_format: Literal["audio", "sse"] = "audio"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    voice: Voice
    format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm16"] = "wav"


StopText = Annotated[str, Field(min_length=1, max_length=64)]


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions body, the parts a character's reply uses; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(CHAT_MODEL, description="A speaker id picks the character when there is no audio.voice.")
    messages: list[Message] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] = Field(default_factory=lambda: ["text"])
    audio: AudioOutput | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**53), le=2**53, description="The same seed and request give the same reply.")
    stop: StopText | list[StopText] | None = Field(None, description="Up to 4 texts that end the reply where it writes them.")
    n: int | None = Field(None, ge=1, description="Only 1: one reply (one voice) per request.")

    def check(self) -> None:
        """What the field constraints cannot say, each refused with the field at fault."""
        if self.n is not None and self.n > 1:
            raise InvalidInput(f"n={self.n}: this server gives one choice per request; send n=1 (or none)", param="n")
        if self.stop is not None and len(self.stop_texts) > MAX_STOP_SEQUENCES:
            raise InvalidInput(f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop")
        if "audio" in self.modalities and self.audio is None:
            raise InvalidInput('modalities ["text", "audio"] need audio: {"voice": ..., "format": ...}', param="audio")

    @property
    def stop_texts(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    @property
    def audio_format(self) -> str | None:
        """The encoder's name for the audio asked for (OpenAI's pcm16 is our pcm); None: text only."""
        if "audio" not in self.modalities or self.audio is None:
            return None
        return "pcm" if self.audio.format == "pcm16" else self.audio.format

    def options(self, speaker_id: str) -> ChatOptions:
        """The reply's options: as events (sentences with their audio) when audio is asked for."""
        return ChatOptions(
            speaker=speaker_id, format="text" if self.audio_format is None else "events",
            max_new_tokens=self.max_completion_tokens or self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, stop=self.stop_texts,
        )


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """OpenAI messages as ours: "developer" is a system message, text parts are joined; tool
    calls and non-text parts (images, input audio) are refused by name."""
    converted = []
    for index, message in enumerate(messages):
        if message.role in ("tool", "function"):
            raise InvalidInput(f"messages[{index}]: {message.role} messages are not supported", param=f"messages[{index}].role")
        if isinstance(message.content, list):
            other = [part.type for part in message.content if part.type != "text"]
            if other:
                raise InvalidInput(
                    f"messages[{index}]: only text content is supported, not {', '.join(sorted(set(other)))}",
                    param=f"messages[{index}].content",
                )
            content = "".join(part.text or "" for part in message.content)
        else:
            content = message.content or ""
        role = "system" if message.role == "developer" else message.role
        converted.append(ChatMessage(role, content))
    return converted
