"""The one root of every failure a client may be told about, and the base of every engine
failure (LLM, TTS, speech-to-text)."""

from __future__ import annotations


class ReportableError(Exception):
    """A failure the client may be told about: a domain error (`chat2audio.errors.ServiceError`),
    an engine's (`EngineError`) or a reply past its deadline (`chat2audio.pipeline.ReplyTimeout`).
    Any other exception is a bug, answered with a generic message."""


class EngineError(ReportableError):
    """An engine could not do its job. The message is written for the client (no internal
    detail: engines log that themselves); `status` is the HTTP status to report: < 500 when the
    input is at fault, 5xx when the engine or its upstream server is."""

    kind = "engine"  # how the client is told which engine failed: "LLM: ..."
    default_status = 502

    def __init__(self, message: str, *, status: int | None = None, not_downloaded: bool = False) -> None:
        super().__init__(message)
        self.status = status if status is not None else self.default_status
        # The engine's model files are simply not there yet (an optional download), which is
        # the normal state of a fresh install, not a failure worth a warning.
        self.not_downloaded = not_downloaded
