"""The one place errors become HTTP: plain JSON responses and the error event of a stream alike.

Domain and engine errors carry their status (see `chat2audio.errors.as_service_error`); any
other exception is logged with the request id and answered with a generic 500 message. Under
`/v1/` (the OpenAI-compatible API) the body has OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}` with our type as the code, and invalid requests are 400s, as OpenAI's SDK
and the clients built on it expect.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from chat2audio.errors import ServiceError, as_service_error
from chat2audio.protocol.chat import ErrorDetail, ErrorResponse
from chat2audio.runtime.errors import ReportableError

log = logging.getLogger(__name__)

HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class ClientGone(Exception):
    """The client disconnected before the response started; nothing is left to answer."""


OPENAI_PREFIX = "/v1/"


def error_body(status: int, type_: str, message: str, *, path: str = "", param: str | None = None) -> dict:
    if path.startswith(OPENAI_PREFIX):
        return {"error": {"message": message, "type": _openai_type(status), "param": param, "code": type_}}
    return ErrorResponse(error=ErrorDetail(type=type_, message=message)).model_dump()


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_detail(error: BaseException, request_id: str) -> ServiceError:
    """What the client is told about `error`; logs what it is not told."""
    failure = as_service_error(error)
    if not isinstance(error, ReportableError):
        log.error("request %s failed", request_id, exc_info=error)
    elif not isinstance(error, ServiceError):  # an engine's failure or a timeout: worth a line in the log
        log.warning("request %s failed: %s", request_id, failure.message)
    return failure


def error_response(error: ServiceError, path: str = "") -> JSONResponse:
    status = 400 if error.status == 422 and path.startswith(OPENAI_PREFIX) else error.status
    body = error_body(status, error.type, error.message, path=path, param=error.param)
    return JSONResponse(body, status_code=status, headers=error.headers)


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
    @app.exception_handler(ReportableError)
    async def _known(request: Request, error: Exception) -> JSONResponse:
        return error_response(error_detail(error, request.state.request_id), request.url.path)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, error: ClientGone) -> Response:
        log.info("request %s: client disconnected; work cancelled", request.state.request_id)
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems, fields = [], []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
            fields.append(where)
        path = request.url.path
        status = 400 if path.startswith(OPENAI_PREFIX) else 422
        body = error_body(status, "invalid_request", "; ".join(problems)[:1000], path=path, param=fields[0] if fields else None)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = HTTP_ERROR_TYPES.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(sorted(allowed_methods(request)))
        body = error_body(error.status_code, type_, str(error.detail), path=request.url.path)
        return JSONResponse(body, status_code=error.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(error_detail(error, getattr(request.state, "request_id", "?")), request.url.path)
