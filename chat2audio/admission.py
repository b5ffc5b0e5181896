"""Admission control: how many replies run at once, how many wait, and for how long.

A request is counted from the moment it arrives (whatever it then waits for: its conversation's
turn, a running slot) until it ends, so the count is the server's real load and nothing waits
uncounted. Beyond `limit + queue` requests, or after waiting `wait_s`, a caller is turned away
with 503 + Retry-After rather than joining an ever-growing queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from chat2audio.errors import Overloaded

RETRY_AFTER_S = 2


class AdmissionControl:
    def __init__(self, limit: int, queue: int, *, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._capacity = limit + queue
        self.wait_s = wait_s
        self.admitted = 0  # running + waiting
        self.running_now = 0
        self.rejected = 0  # turned away since start-up (full, or no slot in time)

    @asynccontextmanager
    async def ticket(self) -> AsyncIterator[None]:
        """Count this request for its whole life; refuse it at once when the server is full."""
        if self.admitted >= self._capacity:
            self.rejected += 1
            raise Overloaded("server is at capacity; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A running slot, waited for at most `wait_s`."""
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            self.rejected += 1
            raise Overloaded(
                f"no free slot within {self.wait_s:g} s; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from None
        self.running_now += 1
        try:
            yield
        finally:
            self.running_now -= 1
            self._slots.release()
