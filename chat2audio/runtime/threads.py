"""The one bridge from blocking model code in a worker thread to an async iterator on the event
loop: `Handover`, and `stream_from_thread` over it for a producer of its own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

END = object()  # the last item a worker thread hands over
Producer = Callable[[Callable[[T], bool], threading.Event], None]


class Handover:
    """What worker threads hand to one reader on the event loop, in order: items, at most one
    exception (raised in the reader), then END."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def send(self, item: object) -> None:
        """From any thread; nothing happens once the reader's loop has closed."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def items(self) -> AsyncIterator:
        while (item := await self._queue.get()) is not END:
            if isinstance(item, BaseException):
                raise item
            yield item


# Generous on purpose: a paused producer keeps its worker thread (and, for a one-thread model, every
# other request) waiting, so normal replies (a few hundred tokens) never pause; a runaway one does.
MAX_BUFFERED_ITEMS = 256


async def stream_from_thread(
    produce: Producer, *, executor: Executor, max_buffered: int = MAX_BUFFERED_ITEMS
) -> AsyncIterator[T]:
    """Run `produce(emit, cancelled)` on a worker of `executor` (the engine's own: its size is
    the engine's concurrency) and yield what it emits, in order.

    `emit(item)` returns False once the consumer has gone, and `cancelled` is set at the same
    moment, so the producer can stop between steps. `emit` blocks while `max_buffered` items
    wait unread, so a slow reader throttles the producer. When the consumer closes this iterator
    (or its task is cancelled), the iterator returns only after the producer has finished:
    no model work outlives the request that asked for it.
    """
    handover = Handover()
    cancelled = threading.Event()
    credits = threading.Semaphore(max_buffered)

    def emit(item: T) -> bool:
        while not credits.acquire(timeout=0.05):
            if cancelled.is_set():
                return False
        if cancelled.is_set():
            return False
        handover.send(item)
        return True

    def run() -> None:
        try:
            produce(emit, cancelled)
        except BaseException as error:  # handed to the consumer, re-raised there
            handover.send(error)
        finally:
            handover.send(END)

    job = executor.submit(run)
    try:
        async for item in handover.items():
            credits.release()
            yield item
    finally:
        cancelled.set()
        # A job still waiting for its worker never starts. A running one is awaited, shielded
        # from our own cancellation, so no model work outlives the request.
        if not job.cancel():
            await asyncio.shield(asyncio.wrap_future(job))

