"""GPT-SoVITS `api_v2.py` compatibility under `/gsv`, for clients written for it (Open-LLM-VTuber's
`gpt_sovits_tts`, SillyTavern's GPT-SoVITS providers): point them at `http://host:8000/gsv`.

api_v2 holds one global model that `/set_gpt_weights` and `/set_sovits_weights` switch, so
concurrent clients hear each other's weights. Here nothing global exists: `ref_audio_path` names
a speaker's reference clip, and that speaker's own weights, reference text and sampling speak.
What a request may say:

- `ref_audio_path`: the clip's path relative to the models dir (`ref_audios/Nahida.wav`), its
  absolute path inside the models dir, its bare file name (`Nahida.wav`), or `参考音频/<speaker
  id>.wav`, what SillyTavern's gpt-sovits-v2 provider builds from a `/gsv/speakers` voice_id. Only
  the speakers' own paths are compared with it: no file a client names is ever opened or looked at.
- `speed_factor` scales the speaker's own speed. `top_k`, `top_p`, `temperature` and
  `repetition_penalty` replace the speaker's own when the request sends them (api_v2's defaults
  do not: a client that sends none hears the speaker as configured). The speaker's reference text
  and languages are always its own. `prompt_text`, `aux_ref_audio_paths` (tone fusion), the batching,
  splitting and seed options are checked as api_v2 checks them and otherwise ignored (our own
  sentence splitter streams the first sentence as soon as it is synthesized).
- `media_type` wav / raw (s16le) / ogg (Vorbis) / aac (ADTS), whole or streamed as synthesized
  (`streaming_mode` true or 1-3).

Errors have api_v2's shape and status, `400 {"message": ...}`, also for a speaker that cannot speak
or a busy server (those clients know no other). The API key applies as everywhere (api_v2 clients
send none, so serve them without one); browser clients (SillyTavern) need their page's origin in
CHAT2AUDIO_CORS_ORIGINS. `/control` (restart or kill the server) is deliberately not served.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chat2audio.codecs import StreamEncoder
from chat2audio.errors import ServiceError
from chat2audio.http.chat import unless_client_leaves
from chat2audio.http.deps import protected_router
from chat2audio.http.encoders import AudioStreamResponse, OpenedReply, encoded_stream, open_reply, whole_file
from chat2audio.http.errors import error_detail
from chat2audio.pipeline import ReplyTimeout
from chat2audio.runtime.errors import EngineError
from chat2audio.service import ChatService
from chat2audio.speakers import Speaker
from tts.base import VoiceParams
from tts.gpt_sovits import GPTSoVITSVoice

router = protected_router("/gsv")
TAG = "GPT-SoVITS api_v2"

# What api_v2 accepts (GPT_SoVITS/TTS_infer_pack: TTS_Config.languages for v2, and the names in
# text_segmentation_method.py); api_v2 answers 400 to anything else.
API_V2_LANGUAGES = ("auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue", "all_ko")
SPLIT_METHODS = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")
# The api_v2 languages our GPT-SoVITS engine has a text front end for (Cantonese and Korean: none).
SPEAKABLE_LANGUAGES = {"auto", "en", "zh", "ja", "all_zh", "all_ja"}
# api_v2's media_type → our encoder's format; the Content-Type stays api_v2's `audio/<media_type>`.
ENCODER_FORMATS = {"wav": "wav", "raw": "pcm", "ogg": "ogg", "aac": "aac"}
# SillyTavern's gpt-sovits-v2 provider sends `./参考音频/<voice_id>.wav`: the reference folder of the
# GPT-SoVITS-V2 fork it was written for, whose `/speakers` lists that folder.
FORK_REFERENCE_DIR = "参考音频"
MAX_LISTED = 40  # clips or weights named in an error message
REQUIRED = ("text", "text_lang", "ref_audio_path", "prompt_lang")  # checked by TTSParams.check, in api_v2's order
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

    def response(self) -> JSONResponse:
        return JSONResponse({"message": self.message}, status_code=400, headers=self.headers)


class TTSParams(BaseModel):
    """api_v2's `/tts` parameters with its defaults (booleans also as "true"/"false"/"1"/"0");
    parameters it does not know are ignored, as api_v2 ignores them."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, description="required: the text to speak, verbatim")
    text_lang: str | None = Field(
        None, description="required: its language", json_schema_extra={"enum": sorted(SPEAKABLE_LANGUAGES)}
    )
    ref_audio_path: str | None = Field(None, description="required: a speaker's reference clip, which picks the speaker")
    aux_ref_audio_paths: list[str] | None = Field(None, description="ignored: each speaker has one reference")
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
AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {f"audio/{media_type}": {} for media_type in ENCODER_FORMATS}, "description": "The spoken text."},
    400: {"model": ApiV2Message},
}


# -- routes ----------------------------------------------------------------------------------------


@router.get("/tts", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_GET_OPENAPI, tags=[TAG])
async def tts_get(request: Request) -> Response:
    """Speak `text` in the voice of the speaker whose reference clip `ref_audio_path` names; the
    parameters of POST /gsv/tts as query parameters."""
    return await _speak(request, _query_params(request))


@router.post("/tts", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_POST_OPENAPI, tags=[TAG])
async def tts_post(request: Request) -> Response:
    """Speak `text` in the voice of the speaker whose reference clip `ref_audio_path` names."""
    try:
        params = await _json_params(request)
    except ApiV2Error as error:
        return error.response()
    return await _speak(request, params)


@router.get("/", response_model=None, responses=AUDIO_RESPONSES, tags=[TAG])
@router.get("", include_in_schema=False, response_model=None)
async def root_get(request: Request) -> Response:
    """With parameters, GET /gsv/tts (the GPT-SoVITS-V2 fork serves both); without, what is here."""
    if request.query_params:
        return await _speak(request, _query_params(request))
    service: ChatService = request.app.state.service
    clips = list(dict.fromkeys(path for path, _ in _owned_files(service, "ref_audio")))
    return JSONResponse({
        "message": "GPT-SoVITS api_v2 compatible: GET/POST /gsv/tts, GET /gsv/speakers, /gsv/set_gpt_weights, "
        "/gsv/set_sovits_weights; ref_audio_path picks the speaker",
        "ref_audio_paths": clips,
    })


@router.post("/", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_POST_OPENAPI, tags=[TAG])
@router.post("", include_in_schema=False, response_class=Response)
async def root_post(request: Request) -> Response:
    """POST /gsv/tts, where SillyTavern's gpt-sovits-v2 provider posts."""
    return await tts_post(request)


@router.get("/speakers", response_model=list[VoiceEntry], tags=[TAG])
async def speakers(request: Request) -> list[VoiceEntry]:
    """The GPT-SoVITS speakers that can speak now, as SillyTavern's gpt-sovits-v2 provider lists
    voices: a bare array of `{name, voice_id}`; the voice_id is the speaker id."""
    service: ChatService = request.app.state.service
    return [
        VoiceEntry(name=speaker.display_name or speaker.id, voice_id=speaker.id)
        for speaker in _gpt_sovits_speakers(service) if speaker.available
    ]


@router.get("/set_gpt_weights", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_gpt_weights(request: Request, weights_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `weights_path` names some speaker's GPT weights. Each /tts
    request speaks with the weights of the speaker its ref_audio_path names, so clients that set
    weights before speaking keep working and never change another client's voice."""
    return _confirm_owned(request, weights_path, "gpt_model", "gpt weight", "change gpt weight failed")


@router.get("/set_sovits_weights", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_sovits_weights(request: Request, weights_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `weights_path` names some speaker's SoVITS weights (see
    /gsv/set_gpt_weights)."""
    return _confirm_owned(request, weights_path, "sovits_model", "sovits weight", "change sovits weight failed")


@router.get("/set_refer_audio", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_refer_audio(request: Request, refer_audio_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `refer_audio_path` names a speaker's reference clip (each
    /tts request names its own)."""
    return _confirm_owned(request, refer_audio_path, "ref_audio", "refer audio", "set refer audio failed")


# -- speaking ----------------------------------------------------------------------------------------

# api_v2 parameters that a GPT-SoVITS voice has too; a request that sends one overrides the speaker's.
SAMPLING_FIELDS = ("top_k", "top_p", "temperature", "repetition_penalty")


def _voice_with_sampling(speaker: Speaker, params: TTSParams) -> VoiceParams:
    """The speaker's voice with the sampling settings this request sent (not api_v2's defaults:
    a client that sends none hears the speaker as configured), validated by the voice's model."""
    sent = {name: getattr(params, name) for name in SAMPLING_FIELDS if name in params.model_fields_set}
    if not sent:
        return speaker.voice
    try:
        return type(speaker.voice).model_validate({**speaker.voice.model_dump(), **sent})
    except ValidationError as error:
        problem = error.errors()[0]
        raise ApiV2Error(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None


async def _speak(request: Request, raw: dict[str, Any]) -> Response:
    """Check the parameters as api_v2 does, find the speaker, and answer with its audio; every
    failure before the first audio is a 400 with api_v2's body."""
    service: ChatService = request.app.state.service
    reply: OpenedReply | None = None
    try:
        params = _validated(raw)
        speaker = speaker_for_ref_audio(service, params.ref_audio_path or "")
        if not speaker.available:
            raise ApiV2Error(f"{speaker.id} is unavailable: {speaker.reason}")
        events = service.speak_text(
            speaker.id, params.text or "", request_id=request.state.request_id, speed=params.speed_factor,
            voice=_voice_with_sampling(speaker, params), stream_first_sentence=request.app.state.streaming,
        )
        reply = await unless_client_leaves(request, open_reply(events, request))
        encoder_format = ENCODER_FORMATS[params.media_type]
        headers = {"X-Speaker": speaker.id, "Cache-Control": "no-store"}
        media_type = f"audio/{params.media_type}"
        if params.streaming:
            encoder = StreamEncoder(encoder_format, reply.started.sample_rate)
            headers["X-Sample-Rate"] = str(encoder.output_rate)
            return AudioStreamResponse(encoded_stream(reply, encoder), media_type=media_type, headers=headers)
        audio, _, rate = await unless_client_leaves(request, whole_file(reply, encoder_format))
        return Response(audio, media_type=media_type, headers=headers | {"X-Sample-Rate": str(rate)})
    except ApiV2Error as error:
        return error.response()
    except (ServiceError, EngineError, ReplyTimeout) as error:
        if reply is not None:
            await reply.rest.aclose()
        failure = error_detail(error, request.state.request_id)
        return ApiV2Error(failure.message, headers=failure.headers).response()


# -- parameters --------------------------------------------------------------------------------------


def _query_params(request: Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query_params)
    if "aux_ref_audio_paths" in params:
        params["aux_ref_audio_paths"] = request.query_params.getlist("aux_ref_audio_paths")
    return params


async def _json_params(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiV2Error(f"send the parameters as JSON with Content-Type: application/json, not {content_type[:80]}")
    body = await request.body()
    try:
        params = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiV2Error(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiV2Error("the body is nested too deeply to be api_v2's /tts parameters") from None
    if not isinstance(params, dict):
        raise ApiV2Error("the body must be a JSON object of api_v2's /tts parameters")
    return params


def _validated(raw: dict[str, Any]) -> TTSParams:
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


# -- which speaker a path names ------------------------------------------------------------------------

VoiceFile = Literal["ref_audio", "gpt_model", "sovits_model"]


def _gpt_sovits_speakers(service: ChatService) -> list[Speaker]:
    return [s for s in service.registry.all() if s.engine == "gpt-sovits" and isinstance(s.voice, GPTSoVITSVoice)]


def _owned_files(service: ChatService, kind: VoiceFile) -> list[tuple[str, Speaker]]:
    """(path relative to the models dir, its speaker) for that file of every GPT-SoVITS speaker."""
    return [(posixpath.normpath(getattr(s.voice, kind)), s) for s in _gpt_sovits_speakers(service)]


def relative_to_models_dir(client_path: str, models_dir: Path) -> str | None:
    """The client's path, normalized, relative to the models dir; None when it points outside.
    Worked out on the text alone: the file system is not asked about anything a client names."""
    normalized = posixpath.normpath(client_path.strip().replace("\\", "/"))
    if posixpath.isabs(normalized):
        roots = {os.path.normpath(models_dir.absolute()), os.path.normpath(models_dir.resolve())}
        for root in roots:
            if normalized.startswith(root.rstrip("/") + "/"):
                return normalized[len(root.rstrip("/")) + 1:]
        return None
    if normalized == ".." or normalized.startswith("../"):
        return None
    return normalized


def _matching(relative: str, owned: list[tuple[str, Speaker]]) -> list[tuple[str, Speaker]]:
    """The owned files a path names: the same path, else (for a bare file name) the same name."""
    same_path = [entry for entry in owned if entry[0] == relative]
    if same_path or "/" in relative:
        return same_path
    return [entry for entry in owned if posixpath.basename(entry[0]) == relative]


def speaker_for_ref_audio(service: ChatService, client_path: str) -> Speaker:
    """The GPT-SoVITS speaker whose reference clip `client_path` names (see the module docstring)."""
    owned = _owned_files(service, "ref_audio")
    relative = relative_to_models_dir(client_path, service.settings.models_dir)
    if relative is None:
        raise ApiV2Error(f"ref_audio_path {client_path[:200]!r} is outside the models dir; {_listing(owned, 'clips')}")
    matches = _matching(relative, owned)
    folder, _, file_name = relative.rpartition("/")
    if not matches and folder == FORK_REFERENCE_DIR:
        speaker_id = posixpath.splitext(file_name)[0]
        matches = [entry for entry in owned if entry[1].id == speaker_id]
    speakers = {speaker.id: speaker for _, speaker in matches}
    if not speakers:
        raise ApiV2Error(f"ref_audio_path {client_path[:200]!r} is no speaker's reference clip; {_listing(owned, 'clips')}")
    if len(speakers) > 1:
        raise ApiV2Error(
            f"ref_audio_path {client_path[:200]!r} is the reference clip of several speakers ({', '.join(sorted(speakers))}); "
            f"name one as {FORK_REFERENCE_DIR}/<speaker id>.wav"
        )
    return next(iter(speakers.values()))


def _confirm_owned(request: Request, client_path: str | None, kind: VoiceFile, what: str, failed: str) -> JSONResponse:
    """api_v2's answer to a weights (or reference) switch, without switching anything."""
    if not client_path:
        return ApiV2Error(f"{what} path is required").response()
    service: ChatService = request.app.state.service
    owned = _owned_files(service, kind)
    relative = relative_to_models_dir(client_path, service.settings.models_dir)
    if relative is None:
        return ApiV2Error(f"{failed}: {client_path[:200]!r} is outside the models dir; {_listing(owned, 'files')}").response()
    if not _matching(relative, owned):
        return ApiV2Error(f"{failed}: {client_path[:200]!r} is no speaker's {what}; {_listing(owned, 'files')}").response()
    return JSONResponse({"message": "success"})


def _listing(owned: list[tuple[str, Speaker]], noun: str) -> str:
    entries = [f"{path} ({speaker.id})" for path, speaker in owned]
    more = f", and {len(entries) - MAX_LISTED} more" if len(entries) > MAX_LISTED else ""
    return f"known {noun}: {', '.join(entries[:MAX_LISTED]) or '(none)'}{more}"
