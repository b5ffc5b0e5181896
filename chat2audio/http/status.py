"""What the service is and how it is doing: health, readiness, work in progress, speakers."""

from __future__ import annotations

import threading

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.protocol import HealthResponse, SpeakerInfo, SpeakersResponse, StatsResponse

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
    return StatsResponse(
        active_replies=service.active_replies,
        admitted_requests=service.admission.admitted,
        llm_active_generations=getattr(service.llm, "active_generations", 0),
        sessions_in_turn=len(service.turn_order),
        llm_tokens_generated=getattr(service.llm, "tokens_generated", 0),
        threads=threading.active_count(),
    )


@protected.get("/speakers", response_model=SpeakersResponse)
async def list_speakers(service: ServiceDep) -> SpeakersResponse:
    infos = []
    for speaker in service.registry.all():
        engine = service.registry.engines.get(speaker.engine or "")
        rate = engine.sample_rate(speaker.voice) if engine is not None and speaker.voice is not None else None
        infos.append(
            SpeakerInfo(
                id=speaker.id, available=speaker.available, reason=speaker.reason, engine=speaker.engine,
                display_name=speaker.display_name, description=speaker.description,
                language=speaker.language, sample_rate=rate,
            )
        )
    return SpeakersResponse(speakers=infos)


router.include_router(protected)
