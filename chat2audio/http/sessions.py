"""What a conversation remembers, and forgetting it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from fastapi.responses import Response

from chat2audio.http.deps import ServiceDep, protected_router
from chat2audio.protocol.chat import SESSION_ID_PATTERN, SessionResponse, Turn

router = protected_router()
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


@router.get("/sessions/{session_id}", response_model=SessionResponse)
async def get_session(
    service: ServiceDep, session_id: SessionId, speaker: Annotated[str, Query(min_length=1, max_length=64)]
) -> SessionResponse:
    """The turns remembered for this session with this speaker (empty if none)."""
    service.registry.get(speaker, needs_voice=False)
    turns = await service.conversations.history(speaker, session_id)
    return SessionResponse(
        session_id=session_id, speaker=speaker, turns=[Turn(role=t.role, content=t.content) for t in turns]
    )


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response)
async def delete_session(service: ServiceDep, session_id: SessionId) -> Response:
    """Start the conversation over: forget this session with every speaker."""
    await service.conversations.forget(session_id)
    return Response(status_code=204)
