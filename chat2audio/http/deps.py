"""Typed dependencies every router shares."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from chat2audio.http.security import require_api_key, require_same_origin
from chat2audio.protocol import ErrorResponse
from chat2audio.service import ChatService


# `async def`: a plain `def` dependency would hop to a worker thread on every request.
async def get_service(request: Request) -> ChatService:
    return request.app.state.service


ServiceDep = Annotated[ChatService, Depends(get_service)]
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (401, 403, 404, 413, 422, 429, 503)}


def protected_router() -> APIRouter:
    """A router whose every route needs the API key (when one is set) and a same-origin page."""
    return APIRouter(dependencies=[Depends(require_api_key), Depends(require_same_origin)], responses=ERROR_RESPONSES)
