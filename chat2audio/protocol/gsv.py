"""GPT-SoVITS api_v2's wire protocol: its /tts parameters with its defaults and checks, its
answer and error body, and SillyTavern's voice list entry (see chat2audio/http/gsv.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# What api_v2 accepts (GPT_SoVITS/TTS_infer_pack: TTS_Config.languages for v2, and the names in
# text_segmentation_method.py); api_v2 answers 400 to anything else.
API_V2_LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
# The api_v2 languages our GPT-SoVITS engine has a text front end for (Cantonese and Korean: none).
SPEAKABLE_LANGUAGES = {"auto", "en", "zh", "ja", "all_zh", "all_ja"}
# api_v2's media_type → our encoder's format; the Content-Type stays api_v2's `audio/<media_type>`.
ENCODER_FORMATS = {"wav": "wav", "raw": "pcm", "ogg": "ogg", "aac": "aac"}
REQUIRED = ("text", "text_lang", "ref_audio_path", "prompt_lang")  # checked by TTSParams.check, in api_v2's order
# api_v2 parameters that a GPT-SoVITS voice has too; a request that sends one overrides the speaker's.
SAMPLING_FIELDS = ("top_k", "top_p", "temperature", "repetition_penalty")
STREAMING_MODE_MESSAGE = "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"


class ApiV2Message(BaseModel):
    """api_v2's answer body: `{"message": "success"}`, or what went wrong (with status 400)."""

    message: str


class VoiceEntry(BaseModel):
    name: str
    voice_id: str = Field(description="send back as ref_audio_path ./参考音频/<voice_id>.wav, as SillyTavern does")


class ApiV2Error(Exception):
    """A request api_v2 would refuse: answered `400 {"message": ...}`, api_v2's shape."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class TTSParams(BaseModel):
    """api_v2's `/tts` parameters with its defaults (booleans also as "true"/"false"/"1"/"0");
    parameters it does not know are ignored, as api_v2 ignores them."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, description="required: the text to speak, verbatim")
    text_lang: str | None = Field(
        None, description="required: its language", json_schema_extra={"enum": sorted(SPEAKABLE_LANGUAGES)}
    )
    ref_audio_path: str | None = Field(None, description="required: a speaker's reference clip, which picks the speaker")
    aux_ref_audio_paths: list[str] | None = Field(
        None,
        description="tone fusion: other reference clips (any speaker's) whose timbre is blended equally with the "
        "speaker's own",
    )
    prompt_text: str = Field("", description="ignored: the speaker's own reference text is used")
    prompt_lang: str | None = Field(
        None, description="required, as api_v2 requires it; the speaker's own is used",
        json_schema_extra={"enum": list(API_V2_LANGUAGES)},
    )
    top_k: int = 15
    top_p: float = 1.0
    temperature: float = 1.0
    text_split_method: str = Field("cut5", json_schema_extra={"enum": list(SPLIT_METHODS)})
    batch_size: int = 1
    batch_threshold: float = 0.75
    split_bucket: bool = True
    speed_factor: float = Field(1.0, gt=0.0, description="scales the speaker's own speed (within 0.5-2 of normal)")
    fragment_interval: float = 0.3
    seed: int = -1
    media_type: str = Field(
        "wav", description="wav, raw (s16le), ogg (Vorbis) or aac (ADTS)", json_schema_extra={"enum": list(ENCODER_FORMATS)}
    )
    streaming_mode: bool | int = Field(False, description="0/false: one file; 1-3/true: audio as it is synthesized")
    parallel_infer: bool = True
    repetition_penalty: float = 1.35
    sample_steps: int = 32
    super_sampling: bool = False
    overlap_length: int = 2
    min_chunk_length: int = 16

    def check(self) -> None:
        """api_v2's own checks, in its order and with its messages."""
        if not self.ref_audio_path:
            raise ApiV2Error("ref_audio_path is required")
        if not self.text:
            raise ApiV2Error("text is required")
        for name, value in (("text_lang", self.text_lang), ("prompt_lang", self.prompt_lang)):
            if not value:
                raise ApiV2Error(f"{name} is required")
            if value.lower() not in API_V2_LANGUAGES:
                raise ApiV2Error(f"{name}: {value} is not supported in version v2")
        if self.text_lang.lower() not in SPEAKABLE_LANGUAGES:
            raise ApiV2Error(f"text_lang: {self.text_lang} is not supported by this server (it speaks zh, en, ja and auto)")
        if self.media_type not in ENCODER_FORMATS:
            raise ApiV2Error(f"media_type: {self.media_type} is not supported")
        if self.text_split_method not in SPLIT_METHODS:
            raise ApiV2Error(f"text_split_method:{self.text_split_method} is not supported")
        if self.streaming_mode not in (0, 1, 2, 3):  # True and False are 1 and 0
            raise ApiV2Error(STREAMING_MODE_MESSAGE)

    @property
    def streaming(self) -> bool:
        return self.streaming_mode != 0

    def sampling_sent(self) -> dict[str, Any]:
        """The sampling settings this request sent (not api_v2's defaults: a client that sends
        none hears the speaker as configured)."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if name in self.model_fields_set}


def _openapi_of_params() -> tuple[dict[str, Any], dict[str, Any]]:
    """The docs of GET (query parameters) and POST (JSON body) /tts: the routes parse the
    parameters themselves, so that even a malformed request gets api_v2's error shape."""
    schema = TTSParams.model_json_schema()
    schema["required"] = list(REQUIRED)
    query = [
        {"name": name, "in": "query", "required": name in REQUIRED, "schema": field}
        for name, field in schema["properties"].items()
    ]
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"parameters": query}, {"requestBody": body}


TTS_GET_OPENAPI, TTS_POST_OPENAPI = _openapi_of_params()


def parse_tts_params(raw: dict[str, Any]) -> TTSParams:
    """api_v2's /tts parameters, checked as api_v2 checks them, or ApiV2Error with its message."""
    try:
        params = TTSParams.model_validate(raw)
    except ValidationError as error:
        problems: list[str] = []
        for item in error.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in item["loc"])
            problem = STREAMING_MODE_MESSAGE if item["loc"][0] == "streaming_mode" else f"{where}: {item['msg']}"
            if problem not in problems:  # a union reports each of its members
                problems.append(problem)
        raise ApiV2Error("; ".join(problems)[:1000]) from None
    params.check()
    return params
