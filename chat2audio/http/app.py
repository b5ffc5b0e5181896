"""The app factory both entry points use: `create_app(streaming=...)`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from chat2audio.http import chat, docs, gsv, openai_api, sessions, status
from chat2audio.http.errors import install_error_handlers
from chat2audio.http.middleware import RequestContext, default_allowed_hosts
from chat2audio.service import ChatService
from chat2audio.settings import Settings

log = logging.getLogger("chat2audio")


def create_app(settings: Settings | None = None, *, streaming: bool) -> FastAPI:
    """Build the service. Models load in the background after start-up, so /health answers at
    once and /ready turns 200 when they are in memory."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ChatService(settings)
        app.state.service = service
        loading = asyncio.create_task(service.start(), name="load-models")
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await service.stop()

    app = FastAPI(
        title="chat2audio" + (" (stream)" if streaming else ""),
        description="Talk with role-played characters in their own voice.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served by http/docs.py, behind the API key
    )
    app.state.streaming = streaming
    app.state.settings = settings
    install_error_handlers(app)
    for module in (status, chat, sessions, gsv, openai_api, docs):
        app.include_router(module.router)
    web = Path(__file__).parent.parent / "web"
    app.mount("/web", StaticFiles(directory=web), name="web")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The page to talk on: pick a speaker, type or speak, hear the reply as it streams."""
        return FileResponse(web / "index.html")

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Reply-Text", "X-Spoken-Text", "X-Sample-Rate", "X-Request-Id", "X-Audio-Seconds", "X-Text-Truncated"],
        )
    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        allowed_hosts=settings.allowed_hosts or default_allowed_hosts(settings.host),
        send_timeout_s=settings.send_timeout_s, life_s=settings.request_life_s,
    )
    return app


def serve(app: FastAPI) -> None:
    """`python app_*.py`: serve on CHAT2AUDIO_HOST:CHAT2AUDIO_PORT (127.0.0.1:8000)."""
    import uvicorn

    settings: Settings = app.state.settings
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
