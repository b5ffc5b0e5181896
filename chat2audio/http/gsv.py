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
  and languages are always its own. `aux_ref_audio_paths` (tone fusion) blends other reference clips
  any speaker owns (named as `ref_audio_path` may be) equally into the speaker's timbre.
  `prompt_text`, the batching, splitting and seed options are checked as api_v2 checks them and
  otherwise ignored (our own sentence splitter streams the first sentence as soon as it is synthesized).
- `media_type` wav / raw (s16le) / ogg (Vorbis) / aac (ADTS), whole or streamed as synthesized
  (`streaming_mode` true or 1-3). A whole file names its words' timings in `X-Word-Timings`.

Errors have api_v2's shape and status, `400 {"message": ...}`, also for a speaker that cannot speak
or a busy server (those clients know no other). The API key applies as everywhere (api_v2 clients
send none, so serve them without one); browser clients (SillyTavern) need their page's origin in
CHAT2AUDIO_CORS_ORIGINS. `/control` (restart or kill the server) is deliberately not served.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from chat2audio.errors import ServiceError
from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.http.errors import error_detail
from chat2audio.http.responders import AudioAnswer, caller_of, respond_audio
from chat2audio.protocol.gsv import (
    ENCODER_FORMATS,
    TTS_GET_OPENAPI,
    TTS_POST_OPENAPI,
    ApiV2Error,
    ApiV2Message,
    VoiceEntry,
    parse_tts_params,
)
from chat2audio.runtime.errors import ReportableError
from chat2audio.service import ChatService
from chat2audio.voices import (
    VoiceFile,
    aux_clips_timbre,
    check_owned,
    gpt_sovits_speakers,
    owned_files,
    speaker_for_ref_audio,
    voice_with,
)

router = protected_router("/gsv")
TAG = "GPT-SoVITS api_v2"

AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {f"audio/{media_type}": {} for media_type in ENCODER_FORMATS}, "description": "The spoken text."},
    400: {"model": ApiV2Message},
}


# -- routes ----------------------------------------------------------------------------------------


@router.get("/tts", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_GET_OPENAPI, tags=[TAG])
async def tts_get(request: Request, service: ServiceDep) -> Response:
    """Speak `text` in the voice of the speaker whose reference clip `ref_audio_path` names; the
    parameters of POST /gsv/tts as query parameters."""
    return await _speak(request, service, _query_params(request))


@router.post("/tts", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_POST_OPENAPI, tags=[TAG])
async def tts_post(request: Request, service: ServiceDep) -> Response:
    """Speak `text` in the voice of the speaker whose reference clip `ref_audio_path` names."""
    try:
        params = await _json_params(request)
    except ApiV2Error as error:
        return _refusal(error.message)
    return await _speak(request, service, params)


@router.get("/", response_model=None, responses=AUDIO_RESPONSES, tags=[TAG])
@router.get("", include_in_schema=False, response_model=None)
async def root_get(request: Request, service: ServiceDep) -> Response:
    """With parameters, GET /gsv/tts (the GPT-SoVITS-V2 fork serves both); without, what is here."""
    if request.query_params:
        return await _speak(request, service, _query_params(request))
    clips = list(dict.fromkeys(path for path, _ in owned_files(service.registry, "ref_audio")))
    return JSONResponse({
        "message": "GPT-SoVITS api_v2 compatible: GET/POST /gsv/tts, GET /gsv/speakers, /gsv/set_gpt_weights, "
        "/gsv/set_sovits_weights; ref_audio_path picks the speaker",
        "ref_audio_paths": clips,
    })


@router.post("/", response_class=Response, responses=AUDIO_RESPONSES, openapi_extra=TTS_POST_OPENAPI, tags=[TAG])
@router.post("", include_in_schema=False, response_class=Response)
async def root_post(request: Request, service: ServiceDep) -> Response:
    """POST /gsv/tts, where SillyTavern's gpt-sovits-v2 provider posts."""
    return await tts_post(request, service)


@router.get("/speakers", response_model=list[VoiceEntry], tags=[TAG])
async def speakers(service: ServiceDep) -> list[VoiceEntry]:
    """The GPT-SoVITS speakers that can speak now, as SillyTavern's gpt-sovits-v2 provider lists
    voices: a bare array of `{name, voice_id}`; the voice_id is the speaker id."""
    return [
        VoiceEntry(name=speaker.display_name or speaker.id, voice_id=speaker.id)
        for speaker in gpt_sovits_speakers(service.registry) if speaker.available
    ]


@router.get("/set_gpt_weights", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_gpt_weights(service: ServiceDep, weights_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `weights_path` names some speaker's GPT weights. Each /tts
    request speaks with the weights of the speaker its ref_audio_path names, so clients that set
    weights before speaking keep working and never change another client's voice."""
    return _confirm_owned(service, weights_path, "gpt_model", "gpt weight", "change gpt weight failed")


@router.get("/set_sovits_weights", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_sovits_weights(service: ServiceDep, weights_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `weights_path` names some speaker's SoVITS weights (see
    /gsv/set_gpt_weights)."""
    return _confirm_owned(service, weights_path, "sovits_model", "sovits weight", "change sovits weight failed")


@router.get("/set_refer_audio", response_model=ApiV2Message, responses={400: {"model": ApiV2Message}}, tags=[TAG])
async def set_refer_audio(service: ServiceDep, refer_audio_path: str | None = None) -> JSONResponse:
    """Switches nothing: success when `refer_audio_path` names a speaker's reference clip (each
    /tts request names its own)."""
    return _confirm_owned(service, refer_audio_path, "ref_audio", "refer audio", "set refer audio failed")


# -- speaking ----------------------------------------------------------------------------------------


async def _speak(request: Request, service: ChatService, raw: dict[str, Any]) -> Response:
    """Check the parameters as api_v2 does, find the speaker, and answer with its audio; every
    failure before the first audio is a 400 with api_v2's body."""
    try:
        params = parse_tts_params(raw)
        speaker = speaker_for_ref_audio(service.registry, service.settings.models_dir, params.ref_audio_path or "")
        if not speaker.available:
            raise ApiV2Error(f"{speaker.id} is unavailable: {speaker.reason}")
        settings = params.sampling_sent()
        if params.aux_ref_audio_paths:
            models_dir = service.settings.models_dir
            settings["timbre"] = aux_clips_timbre(service.registry, models_dir, speaker.voice, params.aux_ref_audio_paths)
        events = service.speak_text(
            speaker.id, params.text or "", caller=caller_of(request), speed=params.speed_factor,
            voice=voice_with(speaker.voice, settings),
        )
        answer = AudioAnswer(ENCODER_FORMATS[params.media_type], params.streaming, media_type=f"audio/{params.media_type}")
        return await respond_audio(request, events, answer)
    except ApiV2Error as error:
        return _refusal(error.message, error.headers)
    except ReportableError as error:
        failure = error_detail(error, request.state.request_id)
        return _refusal(failure.message, failure.headers)


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


def _refusal(message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """api_v2's answer to a request it refuses."""
    return JSONResponse({"message": message}, status_code=400, headers=headers)


def _confirm_owned(service: ChatService, client_path: str | None, kind: VoiceFile, what: str, failed: str) -> JSONResponse:
    """api_v2's answer to a weights (or reference) switch, without switching anything."""
    if not client_path:
        return _refusal(f"{what} path is required")
    try:
        check_owned(service.registry, service.settings.models_dir, client_path, kind, what, failed)
    except ServiceError as error:
        return _refusal(error.message)
    return JSONResponse({"message": "success"})
