"""The chat service in this process, on the scripted backends: for tests that need to look at
its counters and locks directly rather than through HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

from chat2audio.pipeline import AudioChunk
from chat2audio.protocol.chat import ChatOptions
from chat2audio.service import ChatService
from chat2audio.settings import settings_from
from tests.e2e.conftest import scripted_env


@asynccontextmanager
async def scripted_service(root: Path, **settings: str) -> AsyncIterator[ChatService]:
    env = scripted_env(root, **settings)
    service = ChatService(settings_from(env))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def speak(service: ChatService, text: str, *, session_id: str | None = None, speaker: str = "Low") -> int:
    """One whole reply, as a client that listens to the end would get it; returns its samples."""
    samples = 0
    async with aclosing(service.reply(ChatOptions(speaker=speaker, session_id=session_id), text=text)) as events:
        async for event in events:
            if isinstance(event, AudioChunk):
                samples += event.audio.size
    return samples
