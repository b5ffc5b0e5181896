"""Conversation memory: the last turns of each session, forgotten when idle.

A session belongs to one speaker (the same id with another character is another conversation).
The store is an interface so that replicas can share one (e.g. Redis); the default lives in
this process's memory.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from cachetools import TTLCache

from chat2audio.admission import RETRY_AFTER_S
from chat2audio.errors import Overloaded, TooManyTurns
from llm.base import ChatMessage


class SessionStore(Protocol):
    async def history(self, speaker: str, session_id: str) -> list[ChatMessage]: ...

    async def remember(self, speaker: str, session_id: str, user: str, assistant: str) -> None: ...

    async def forget(self, session_id: str) -> int:
        """Forget the session with every speaker; returns how many conversations were dropped."""
        ...

    async def close(self) -> None:
        """Release the store's connections (at shutdown)."""
        ...


class TurnOrder:
    """One reply at a time per conversation (in this process): a turn posted while the previous
    one is still being spoken waits for it, so the LLM sees that exchange. At most `max_waiting`
    turns may wait per conversation (429 beyond) and none longer than `wait_s` (503). Locks exist
    only while a conversation has a turn running or waiting."""

    def __init__(self, *, max_waiting: int = 2, wait_s: float | None = None) -> None:
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self._turns: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, speaker: str, session_id: str) -> AsyncIterator[None]:
        key = (speaker, session_id)
        lock, holders = self._turns.get(key, (asyncio.Lock(), 0))
        if holders > self.max_waiting:  # one runs, `max_waiting` wait
            raise TooManyTurns(
                f"session {session_id!r} already has {holders - 1} turns waiting; send the next one when a reply ends",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._turns[key] = (lock, holders + 1)
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await lock.acquire()
            except TimeoutError:
                raise Overloaded(
                    f"the previous turn of session {session_id!r} is still running after {self.wait_s:g} s",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, holders = self._turns[key]
            if holders == 1:
                del self._turns[key]
            else:
                self._turns[key] = (lock, holders - 1)

    def __len__(self) -> int:
        return len(self._turns)


class MemorySessionStore:
    """Sessions in this process: at most `max_turns` exchanges each, `max_sessions` in all (least
    recently used dropped first), and none idle for longer than `ttl_s` (cachetools' TTL cache)."""

    def __init__(self, *, max_turns: int, ttl_s: float, max_sessions: int) -> None:
        self.max_turns = max_turns
        self._sessions: TTLCache[tuple[str, str], list[ChatMessage]] = TTLCache(maxsize=max_sessions, ttl=ttl_s)

    def __len__(self) -> int:
        self._sessions.expire()
        return len(self._sessions)

    async def history(self, speaker: str, session_id: str) -> list[ChatMessage]:
        return list(self._sessions.get((speaker, session_id), []))

    async def remember(self, speaker: str, session_id: str, user: str, assistant: str) -> None:
        key = (speaker, session_id)
        turns = [*self._sessions.pop(key, []), ChatMessage("user", user), ChatMessage("assistant", assistant)]
        self._sessions[key] = turns[max(0, len(turns) - 2 * self.max_turns):]  # re-set: idle time starts again

    async def forget(self, session_id: str) -> int:
        keys = [key for key in list(self._sessions.keys()) if key[1] == session_id]
        for key in keys:
            del self._sessions[key]
        return len(keys)

    async def close(self) -> None:
        pass


class RedisSessionStore:
    """Sessions in Redis, shared by every replica: one list of JSON turns per (speaker, session),
    trimmed to the window and expiring after `ttl_s` idle seconds. A set per session names its
    speakers, so forgetting a session touches its own keys only (no keyspace scan)."""

    def __init__(
        self, url: str, *, max_turns: int, ttl_s: float, timeout_s: float = 5.0, prefix: str = "chat2audio:session:"
    ) -> None:
        import redis.asyncio as redis  # only needed when this store is configured

        self._redis = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.max_turns = max_turns
        self.ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix
        self._index_prefix = prefix.rstrip(":") + "-speakers:"

    def _key(self, speaker: str, session_id: str) -> str:
        return f"{self._prefix}{session_id}:{speaker}"

    def _index(self, session_id: str) -> str:
        return f"{self._index_prefix}{session_id}"

    async def history(self, speaker: str, session_id: str) -> list[ChatMessage]:
        raw = await self._redis.lrange(self._key(speaker, session_id), 0, -1)
        return [ChatMessage(**json.loads(item)) for item in raw]

    async def remember(self, speaker: str, session_id: str, user: str, assistant: str) -> None:
        key = self._key(speaker, session_id)
        turns = [json.dumps({"role": "user", "content": user}), json.dumps({"role": "assistant", "content": assistant})]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *turns)
            if self.max_turns:
                pipe.ltrim(key, -2 * self.max_turns, -1)
            else:
                pipe.delete(key)
            pipe.pexpire(key, self.ttl_ms)
            pipe.sadd(self._index(session_id), speaker)
            pipe.pexpire(self._index(session_id), self.ttl_ms)
            await pipe.execute()

    async def forget(self, session_id: str) -> int:
        index = self._index(session_id)
        speakers = await self._redis.smembers(index)
        keys = [self._key(speaker.decode(), session_id) for speaker in speakers]
        dropped = await self._redis.delete(*keys) if keys else 0
        await self._redis.delete(index)
        return dropped

    async def close(self) -> None:
        await self._redis.aclose()
