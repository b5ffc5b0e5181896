"""What the service is and how it is doing: health, readiness, work in progress, speakers."""

from __future__ import annotations

import threading

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from chat2audio.errors import NoPortrait
from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.portraits import find_portrait
from chat2audio.protocol.chat import ErrorResponse, HealthResponse, SpeakerInfo, SpeakersResponse, StatsResponse
from llm.base import CountsGenerations

router = APIRouter()
protected = protected_router()


@router.get("/health", response_model=HealthResponse)
async def health(service: ServiceDep) -> HealthResponse:
    """The process is up (it answers even while models load or all slots are busy)."""
    return HealthResponse(status="ok" if service.ready else "loading")


@protected.get("/ready", response_model=HealthResponse)
async def ready(service: ServiceDep) -> JSONResponse:
    """200 once the models are loaded, 503 before (or if loading failed)."""
    if service.ready:
        return JSONResponse({"status": "ok"})
    body = {"status": "loading"} | ({"error": service.load_error} if service.load_error else {})
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@protected.get("/stats", response_model=StatsResponse)
async def stats(service: ServiceDep) -> StatsResponse:
    """Work in progress right now: lets operators (and tests) see that nothing runs for nobody."""
    counters = service.llm if isinstance(service.llm, CountsGenerations) else None
    return StatsResponse(
        active_replies=service.active_replies,
        admitted_requests=service.admission.admitted,
        llm_active_generations=counters.active_generations if counters else 0,
        sessions_in_turn=len(service.turn_order),
        llm_tokens_generated=counters.tokens_generated if counters else 0,
        threads=threading.active_count(),
    )


@protected.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics: time to first audio, real-time factor, requests by route and status,
    in flight, queued, rejected, LLM tokens, TTS audio seconds per engine."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@protected.get("/speakers", response_model=SpeakersResponse)
async def list_speakers(service: ServiceDep) -> SpeakersResponse:
    infos = []
    speakers_dir = service.settings.speakers_dir
    for speaker in service.registry.all():
        engine = service.registry.engines.get(speaker.engine or "")
        rate = engine.sample_rate(speaker.voice) if engine is not None and speaker.voice is not None else None
        portrait = find_portrait(speakers_dir, speaker.id)
        infos.append(
            SpeakerInfo(
                id=speaker.id, available=speaker.available, can_chat=speaker.can_chat, reason=speaker.reason,
                download_command=speaker.download_command, engine=speaker.engine,
                display_name=speaker.display_name, description=speaker.description,
                language=speaker.language, sample_rate=rate, styles=list(speaker.styles),
                portrait_url=f"/speakers/{speaker.id}/portrait" if portrait else None,
            )
        )
    return SpeakersResponse(speakers=infos)


@protected.get(
    "/speakers/{speaker_id}/portrait",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, 404: {"model": ErrorResponse}},
)
async def speaker_portrait(speaker_id: str, service: ServiceDep) -> FileResponse:
    """The character's picture, `speakers/<id>.png|jpg|jpeg|webp`; 404 if it has none."""
    service.registry.require(speaker_id)
    portrait = find_portrait(service.settings.speakers_dir, speaker_id)
    if portrait is None:
        raise NoPortrait(f"speaker {speaker_id!r} has no portrait (speakers/{speaker_id}.png, .jpg or .webp)")
    # Served as the image it is and nothing else: no sniffing, no scripts if opened on its own.
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox", "Cache-Control": "no-cache"}
    return FileResponse(portrait.path, media_type=portrait.media_type, headers=headers)


router.include_router(protected)
