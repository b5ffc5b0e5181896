"""Domain errors: what a client may be told, with the HTTP status each one means. No web
framework here; `chat2audio.http.errors` is the one place these become responses."""

from __future__ import annotations

from chat2audio.pipeline import ReplyTimeout
from chat2audio.runtime.errors import EngineError, ReportableError
from stt.base import STTError


class ServiceError(ReportableError):
    """An error the client should see: carries its HTTP status, a type and a safe message, and
    the request field at fault (`param`, which OpenAI-style errors name) when there is one."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param


class InvalidInput(ServiceError):
    status, type = 422, "invalid_input"


class InvalidAudio(ServiceError):
    status, type = 422, "invalid_audio"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class UnknownSpeaker(ServiceError):
    status, type = 404, "unknown_speaker"


class UnknownStyle(ServiceError):
    """The speaker exists but has no such style: like an unknown speaker, a name this server lacks."""

    status, type = 404, "unknown_style"


class UnknownVoice(ServiceError):
    status, type = 400, "unknown_voice"


class NoPortrait(ServiceError):
    status, type = 404, "no_portrait"


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


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class Forbidden(ServiceError):
    status, type = 403, "forbidden"


class UpstreamError(ServiceError):
    """An engine (LLM, TTS, speech-to-text) failed; the status comes from it (5xx)."""

    type = "upstream_error"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


INTERNAL_ERROR_MESSAGE = "internal error; see the server log"


def as_service_error(error: BaseException) -> ServiceError:
    """What the client may be told about any failure; unknown errors say nothing internal.

    An engine error below 500 means the input was at fault (a sentence too long to synthesize,
    undecodable audio): the client gets an input error, not an upstream one."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, EngineError):
        message = f"{error.kind}: {error}"
        if error.status < 500:
            return InvalidAudio(message) if isinstance(error, STTError) else InvalidInput(message)
        return UpstreamError(message, status=error.status)
    if isinstance(error, ReplyTimeout):
        return UpstreamError(str(error), status=504)
    return ServiceError(INTERNAL_ERROR_MESSAGE)
