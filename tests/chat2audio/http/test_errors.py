"""Every error a client can get, walked through the one mapping to its status and body: domain
errors keep their own, engine errors say which engine, anything else says nothing internal."""

from __future__ import annotations

import inspect
import json

import pytest

import chat2audio.errors as domain
from chat2audio.http.errors import error_detail, error_response
from chat2audio.pipeline import ReplyTimeout
from llm.base import LLMError
from stt.base import STTError
from tts.base import TTSError

SECRET = "Traceback: KeyError('/srv/models/secret.ckpt') at 0x7f"


def respond(error: BaseException) -> tuple[int, dict, dict]:
    response = error_response(error_detail(error, "test-request"))
    return response.status_code, json.loads(response.body), dict(response.headers)


DOMAIN_ERRORS = [
    cls for _, cls in inspect.getmembers(domain, inspect.isclass)
    if issubclass(cls, domain.ServiceError) and cls not in (domain.ServiceError, domain.UpstreamError)
]


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda cls: cls.__name__)
def test_each_domain_error_keeps_its_status_type_message_and_headers(cls):
    status, body, headers = respond(cls("what to do next", headers={"Retry-After": "3"}))
    assert status == cls.status and 400 <= status < 600
    assert body == {"error": {"type": cls.type, "message": "what to do next"}}
    assert headers["retry-after"] == "3"


@pytest.mark.parametrize(
    ("error", "status", "type_", "message"),
    [
        (LLMError("the LLM server is down", status=503), 503, "upstream_error", "LLM: the LLM server is down"),
        (LLMError("no answer in 60 s", status=504), 504, "upstream_error", "LLM: no answer in 60 s"),
        (TTSError("synthesis failed; see the server log"), 500, "upstream_error", "TTS: synthesis failed; see the server log"),
        (TTSError("sentence too long (900 characters)", status=422), 422, "invalid_input", "TTS: sentence too long (900 characters)"),
        (STTError("could not decode the audio", status=422), 422, "invalid_audio", "speech-to-text: could not decode the audio"),
        (STTError("the STT server is down", status=503), 503, "upstream_error", "speech-to-text: the STT server is down"),
        (ReplyTimeout("reply took longer than 300 s"), 504, "upstream_error", "reply took longer than 300 s"),
    ],
)
def test_engine_errors_name_the_engine_and_an_input_fault_is_not_an_upstream_one(error, status, type_, message):
    assert respond(error)[:2] == (status, {"error": {"type": type_, "message": message}})


@pytest.mark.parametrize("error", [RuntimeError(SECRET), KeyError(SECRET), ValueError(SECRET), AssertionError(SECRET)])
def test_an_unexpected_exception_is_a_500_that_tells_nothing_internal(error, caplog):
    status, body, _ = respond(error)
    assert status == 500 and body == {"error": {"type": "internal_error", "message": domain.INTERNAL_ERROR_MESSAGE}}
    assert "secret" not in json.dumps(body) and "test-request" in caplog.text  # the log has it, by request id
