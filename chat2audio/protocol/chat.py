"""chat2audio's own wire protocol: every request, response, error and stream event of its own
routes, shared by both apps."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ChatOptions(BaseModel):
    """Every field of a chat request but the input itself (voice requests send speech instead)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "false" for a temperature, no "5" for a count

    speaker: str = Field(min_length=1, max_length=64, description="Speaker id, see GET /speakers.")
    format: Literal["wav", "mp3", "opus", "aac", "flac", "ogg", "pcm", "events", "text"] = Field(
        "wav",
        description='"wav": audio/wav (streamed by the stream app). "mp3", "opus" (Ogg Opus), "aac" (ADTS), '
        '"flac", "ogg" (Ogg Vorbis), "pcm" (s16le mono at X-Sample-Rate): the same audio compressed as it '
        'streams. "events": text/event-stream of JSON events, one per sentence with its text and audio '
        '(WAV), then the whole reply. "text": the same events without audio (no speech synthesis at all).',
    )
    session_id: str | None = Field(
        None,
        pattern=SESSION_ID_PATTERN,
        description="Keep a conversation: earlier turns of this session (with this speaker) are remembered.",
    )
    max_new_tokens: int | None = Field(None, ge=1, le=2048, description="Overrides the speaker's reply length cap.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Overrides the LLM sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Overrides the LLM's nucleus sampling (top_p).")
    seed: int | None = Field(
        None, ge=-(2**53), le=2**53, description="Samples reproducibly: the same seed and request give the same reply."
    )
    style: str | None = Field(
        None, max_length=32,
        description="Speak the whole reply in this style (mood) of the speaker (see GET /speakers); its tags in the "
        "reply are then ignored. Unset: the reply's own tags choose.",
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=4, description="Up to 4 texts that end the reply where the LLM writes them (not included)."
    )

    @field_validator("max_new_tokens", "seed", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # JSON has one number type: 256.0 is an integer to JSON Schema, so accept it as one.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class ChatRequest(ChatOptions):
    """`POST /chat2audio` body."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"input": "Hello, who are you?", "speaker": "Aria"}]})

    input: str = Field(
        min_length=1,
        description="What the user says to the character: some non-blank text without NUL characters.",
        # Documents what `_not_blank` enforces (the validator gives the clearer error message).
        json_schema_extra={"pattern": r"^[^\x00]*[^\s\x00][^\x00]*$"},
    )

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must contain some text")
        if "\x00" in value:
            raise ValueError("input must not contain NUL characters")
        return value


class SpeakerInfo(BaseModel):
    id: str
    available: bool = Field(description="It can speak: its voice is loaded or loadable.")
    can_chat: bool = Field(True, description="It can answer in text (format: text) even if it cannot speak.")
    reason: str | None = Field(None, description="Why the speaker is unavailable (missing files, …).")
    download_command: str | None = Field(None, description="What fetches the voice's missing files.")
    portrait_url: str | None = Field(None, description="Its picture, if speakers/<id>.png|jpg|webp exists.")
    engine: str | None = None
    display_name: str | None = None
    description: str | None = None
    language: str | None = Field(None, description="Language the character speaks.")
    sample_rate: int | None = None
    styles: list[str] = Field(
        default_factory=list, description='Its styles (moods): a reply switches with "[name]" tags; a request may pin one.'
    )


class SpeakersResponse(BaseModel):
    speakers: list[SpeakerInfo]


class ErrorDetail(BaseModel):
    type: str = Field(description='Machine-readable kind, e.g. "unknown_speaker".')
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok", "loading"]


class StatsResponse(BaseModel):
    active_replies: int = Field(description="Replies being generated or spoken now.")
    admitted_requests: int = Field(description="Requests running or waiting for a slot.")
    llm_active_generations: int = Field(description="LLM generations running now (streams open, for a remote server).")
    sessions_in_turn: int = Field(0, description="Conversations with a turn running or waiting.")
    llm_tokens_generated: int = Field(0, description="Tokens the LLM generated since start-up (a counter).")
    threads: int


# -- events of format="events" (text/event-stream, one JSON object per `data:` line) -------


class StartEvent(BaseModel):
    type: Literal["start"] = "start"
    request_id: str
    speaker: str
    sample_rate: int
    session_id: str | None = None
    transcript: str | None = Field(None, description="What was heard, when the input was speech.")


class WordTimingInfo(BaseModel):
    text: str
    start_s: float = Field(description="When the word starts, in seconds from the start of its sentence's audio.")
    end_s: float


class SentenceEvent(BaseModel):
    type: Literal["sentence"] = "sentence"
    index: int
    text: str = Field(description="The sentence as the LLM wrote it (style tags taken out).")
    speech_text: str | None = Field(None, description="What was spoken, when the speaker speaks another language.")
    style: str | None = Field(None, description="The style (mood) it was spoken in; null: the speaker's own voice.")
    audio_wav_base64: str | None = Field(None, description="This sentence's audio as a complete base64 WAV.")
    audio_seconds: float = 0.0
    offset_s: float = Field(0.0, description="Where this sentence's audio starts in the whole reply's audio, in seconds.")
    words: list[WordTimingInfo] | None = Field(
        None,
        description="When each word (each character, for Chinese, where the engine tells them apart) is heard, "
        "from the start of this sentence's audio; null where the voice's engine does not say.",
    )
    mouth: list[float] | None = Field(
        None, description="How open the mouth is (loudness relative to the sentence's loudest moment, 0 to 1) over "
        "each mouth_frame_s of this sentence's audio: lip-sync without audio analysis. Null without audio.",
    )
    mouth_frame_s: float = 0.02
    elapsed_seconds: float = Field(description="Seconds since the request arrived when this sentence was ready.")


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    text: str = Field(description="The whole reply as the LLM wrote it (cut to whole sentences if it ran out of tokens).")
    spoken_text: str = Field(description="What was spoken (stage directions and emoji removed).")
    finish_reason: str
    audio_seconds: float
    elapsed_seconds: float


class Turn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class SessionResponse(BaseModel):
    session_id: str
    speaker: str
    turns: list[Turn]


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail


ChatEvent = Annotated[Union[StartEvent, SentenceEvent, DoneEvent, ErrorEvent], Field(discriminator="type")]


def event_schema() -> dict[str, Any]:
    """The JSON Schema of one event of format="events" (each `data:` line), self-contained (its
    definitions inlined), for the OpenAPI document's text/event-stream response."""
    schema = TypeAdapter(ChatEvent).json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    schema = inline(schema)
    schema.get("discriminator", {}).pop("mapping", None)  # it named the definitions inlined above
    return schema
