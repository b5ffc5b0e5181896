"""Typed dependencies every router shares."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from chat2audio.http.security import require_api_key, require_same_origin
from chat2audio.protocol.chat import ErrorResponse
from chat2audio.service import ChatService


# `async def`: a plain `def` dependency would hop to a worker thread on every request.
async def get_service(request: Request) -> ChatService:
    return request.app.state.service


ServiceDep = Annotated[ChatService, Depends(get_service)]
ERROR_STATUSES = (401, 403, 404, 413, 422, 429, 503)


def protected_router(prefix: str = "", *, error_model: type[BaseModel] = ErrorResponse, statuses: tuple[int, ...] = ()) -> APIRouter:
    """A router whose every route needs the API key (when one is set) and a same-origin page;
    its error responses documented with `error_model`, for `statuses` beyond the usual."""
    responses = {status: {"model": error_model} for status in sorted({*ERROR_STATUSES, *statuses})}
    return APIRouter(prefix=prefix, dependencies=[Depends(require_api_key), Depends(require_same_origin)], responses=responses)
