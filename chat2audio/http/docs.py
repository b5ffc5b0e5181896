"""The API documentation (`/docs`, `/redoc`) and its schema (`/openapi.json`), behind the API key
like every route that tells about the service: FastAPI's own docs routes take no dependencies,
so with a key set they described every route to anyone who asked."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from chat2audio.http.security import require_api_key

SCHEMA_PATH = "/openapi.json"

router = APIRouter(dependencies=[Depends(require_api_key)], include_in_schema=False)


@router.get(SCHEMA_PATH)
async def schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=SCHEMA_PATH, title=f"{request.app.title} - API docs")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=SCHEMA_PATH, title=f"{request.app.title} - ReDoc")
