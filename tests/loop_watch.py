"""Watching the event loop from a test: how long it went without running a ready task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def loop_gaps(interval_s: float = 0.01) -> AsyncIterator[list[float]]:
    """A list filled, while the block runs, with the seconds between ticks of a task that wakes
    every `interval_s`: a blocked event loop shows as a long gap."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(interval_s)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        yield gaps
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
