"""The thread bridge: a reader that stops reading throttles the producer, and a reader that
leaves stops it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chat2audio.runtime.threads import stream_from_thread
from tests.loop_watch import loop_gaps


async def test_a_slow_reader_throttles_the_producer_and_leaving_stops_it():
    produced = 0
    finished = threading.Event()

    def produce(emit, cancelled) -> None:
        nonlocal produced
        try:
            for n in range(100_000):
                if not emit(n):
                    return
                produced += 1
        finally:
            finished.set()

    worker = ThreadPoolExecutor(max_workers=1)
    stream = stream_from_thread(produce, executor=worker, max_buffered=8)
    assert await anext(stream) == 0
    await asyncio.sleep(0.3)  # the reader stalls: the producer must wait, not run ahead
    assert produced <= 1 + 8 + 1
    await stream.aclose()
    assert finished.wait(1)
    assert produced < 20


async def test_stopping_an_engine_with_work_in_flight_does_not_block_the_event_loop():
    from chat2audio.settings import Settings
    from chat2audio.wiring import create_tts

    engine = create_tts("espeak", Settings())
    await engine.start()
    running = threading.Event()

    def synthesis_in_flight() -> None:
        running.set()
        time.sleep(1.0)

    engine._worker.submit(synthesis_in_flight)  # still running at shutdown
    assert running.wait(5)
    async with loop_gaps() as gaps:
        await engine.stop()
    assert gaps and max(gaps) < 0.2  # the loop kept ticking while the worker finished
