"""Reading a `POST /chat2audio`: a JSON body, or a multipart form carrying the user's speech."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from chat2audio.errors import InvalidInput, UnsupportedMediaType
from chat2audio.protocol.chat import ChatOptions, ChatRequest
from chat2audio.service import VoiceInput

NUMERIC_FORM_FIELDS = {"max_new_tokens": int, "temperature": float, "top_p": float, "seed": int}


@dataclass(frozen=True)
class ChatInput:
    """A parsed request: the options, and either typed text or recorded speech."""

    options: ChatOptions
    text: str | None = None
    voice: VoiceInput | None = None


async def parse_chat_request(request: Request) -> ChatInput:
    """A JSON body (`Content-Type: application/json`), or, for voice input, a multipart form
    whose `audio` file is transcribed once the request has been admitted."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            return await _parse_voice_request(request)
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise UnsupportedMediaType(
                f"send the request as JSON with the header Content-Type: application/json (curl: --json '{{...}}'), "
                f"or as multipart/form-data with an audio file; got {content_type[:80] or 'no content type'}"
            )
        body = ChatRequest.model_validate_json(await request.body())
        return ChatInput(options=body, text=body.input)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_input=False, include_url=False)) from None


async def _parse_voice_request(request: Request) -> ChatInput:
    """multipart/form-data: `audio` (WAV/FLAC/OGG) plus the JSON fields as form fields."""
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("audio")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("multipart requests need an `audio` file field holding the user's speech")
    fields: dict[str, object] = {key: value for key, value in form.items() if key != "audio" and isinstance(value, str)}
    if "input" in fields:
        raise InvalidInput("send either typed `input` (as JSON) or an `audio` file, not both")
    for name, kind in NUMERIC_FORM_FIELDS.items():
        if name in fields:
            try:
                fields[name] = kind(fields[name])
            except ValueError:
                raise InvalidInput(f"{name} must be a number") from None
    return ChatInput(options=ChatOptions.model_validate(fields), voice=VoiceInput(await upload.read(), upload.filename))
