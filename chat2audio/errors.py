"""Domain errors and the one place they become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from chat2audio.protocol import ErrorDetail, ErrorResponse
from chat2audio.pipeline import ReplyTimeout
from llm.base import LLMError
from stt.base import STTError
from tts.base import TTSError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the client should see: carries its HTTP status, a type and a safe message."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status, type = 422, "invalid_input"


class InvalidAudio(ServiceError):
    status, type = 422, "invalid_audio"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class UnknownSpeaker(ServiceError):
    status, type = 404, "unknown_speaker"


class SpeakerUnavailable(ServiceError):
    status, type = 503, "speaker_unavailable"


class Overloaded(ServiceError):
    status, type = 503, "overloaded"


class TooManyTurns(ServiceError):
    """One conversation sent more turns than may wait for it; other conversations are unaffected."""

    status, type = 429, "too_many_turns"


class SessionStoreUnavailable(ServiceError):
    status, type = 503, "session_store_unavailable"


class VoiceInputUnavailable(ServiceError):
    status, type = 503, "voice_input_unavailable"


class Forbidden(ServiceError):
    status, type = 403, "forbidden"


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class UpstreamError(ServiceError):
    """The LLM or TTS failed; the status comes from the backend (502/503/504)."""

    type = "upstream_error"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def as_service_error(error: BaseException) -> ServiceError:
    """What the client may be told about any failure; unknown errors say nothing internal."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, LLMError):
        return UpstreamError(f"LLM: {error}", status=error.status)
    if isinstance(error, TTSError):
        return UpstreamError(f"TTS: {error}", status=error.status)
    if isinstance(error, STTError):
        if error.status < 500:
            return InvalidAudio(f"speech-to-text: {error}")
        return UpstreamError(f"speech-to-text: {error}", status=error.status)
    if isinstance(error, ReplyTimeout):
        return UpstreamError(str(error), status=504)
    return ServiceError("internal error; see the server log")


def error_body(status: int, type_: str, message: str) -> dict:
    return ErrorResponse(error=ErrorDetail(type=type_, message=message)).model_dump()


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.type, error.message), status_code=error.status, headers=error.headers)


def allowed_methods(request: Request) -> set[str]:
    """Every method served at this request's path, read from the app's OpenAPI paths.

    Starlette's 405 names only the first matching route's methods; a path served by two routes
    (GET and DELETE /sessions/{id}) needs them all in `Allow`.
    """
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette serves HEAD wherever it serves GET
    return methods


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(LLMError)
    @app.exception_handler(TTSError)
    @app.exception_handler(ReplyTimeout)
    @app.exception_handler(STTError)
    async def _engine_error(request: Request, error: Exception) -> JSONResponse:
        log.warning("request %s failed: %s", request.state.request_id, error)
        return error_response(as_service_error(error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return JSONResponse(error_body(422, "invalid_request", "; ".join(problems)[:1000]), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
        return JSONResponse(error_body(error.status_code, type_, str(error.detail)), status_code=error.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("request %s failed", getattr(request.state, "request_id", "?"))
        return JSONResponse(error_body(500, "internal_error", "internal error; see the server log"), status_code=500)
