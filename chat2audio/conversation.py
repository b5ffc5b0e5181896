"""A conversation's memory seen from one reply: wait for its turn, read its history, remember
the exchange. Built on a session store and the per-process turn order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from chat2audio.errors import SessionStoreUnavailable
from chat2audio.sessions import SessionStore, TurnOrder
from llm.base import ChatMessage

log = logging.getLogger(__name__)


class Conversations:
    def __init__(self, store: SessionStore, turn_order: TurnOrder, *, store_timeout_s: float) -> None:
        self.store = store
        self.turn_order = turn_order
        self.store_timeout_s = store_timeout_s

    @asynccontextmanager
    async def turn(self, speaker: str, session_id: str | None) -> AsyncIterator[None]:
        """This conversation's turn (waited for, bounded); nothing to wait for without a session."""
        if session_id is None:
            yield
            return
        async with self.turn_order.turn(speaker, session_id):
            yield

    async def history(self, speaker: str, session_id: str) -> list[ChatMessage]:
        """The remembered turns; a store that cannot be read is a 503 naming the way out."""
        try:
            return await self.store.history(speaker, session_id)
        except Exception:
            log.exception("session store failed to read the history of %s", session_id)
            raise _store_unavailable() from None

    async def forget(self, session_id: str) -> int:
        try:
            return await self.store.forget(session_id)
        except Exception:
            log.exception("session store failed to forget %s", session_id)
            raise _store_unavailable() from None

    async def remember(self, speaker: str, session_id: str, user: str, assistant: str) -> None:
        """Remember one exchange; never raises.

        Shielded: on a hang-up this runs while the request is being cancelled, and the store
        may need a round trip (Redis). Bounded, and a failing store is logged, not raised: the
        reply has been delivered."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.store_timeout_s) as timer:
            try:
                await self.store.remember(speaker, session_id, user, assistant)
            except Exception:
                log.exception("could not remember the exchange of session %s", session_id)
        if timer.cancelled_caught:
            log.warning("session store too slow; the exchange of session %s was not remembered", session_id)


def _store_unavailable() -> SessionStoreUnavailable:
    return SessionStoreUnavailable(
        "the conversation memory is unavailable right now; retry, or send the request without session_id",
        headers={"Retry-After": "5"},
    )
