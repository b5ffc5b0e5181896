"""Admission control: every request is counted from arrival, waits are bounded, and the excess is
turned away at once with 429/503 + Retry-After instead of queueing without end."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat2audio.errors import Overloaded, TooManyTurns
from tests.inprocess import scripted_service, speak

LONG = "This reply takes a while to say. " * 6


async def outcomes(tasks: list[asyncio.Task]) -> list[object]:
    return [task.exception() or task.result() for task in tasks]


async def test_two_hundred_turns_on_one_session_cannot_bypass_admission(tmp_path):
    async with scripted_service(tmp_path, max_concurrent_requests="4", max_queued_requests="16") as service:
        tasks = [asyncio.create_task(speak(service, LONG, session_id="one")) for _ in range(200)]
        await asyncio.sleep(0.3)
        # One turn runs, two wait for it; the rest were refused at once and are not counted.
        assert service.admission.admitted == 3
        refused = [task for task in tasks if task.done()]
        assert len(refused) == 197
        assert all(isinstance(task.exception(), TooManyTurns) for task in refused)
        assert refused[0].exception().status == 429 and refused[0].exception().headers["Retry-After"]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert sum(isinstance(result, int) and result > 0 for result in results) == 3
        assert service.admission.admitted == 0 and len(service.turn_order) == 0


async def test_requests_beyond_running_plus_queued_are_refused_at_once(tmp_path):
    async with scripted_service(tmp_path, max_concurrent_requests="2", max_queued_requests="3") as service:
        tasks = [asyncio.create_task(speak(service, LONG, session_id=f"s{n}")) for n in range(200)]
        await asyncio.sleep(0.2)
        assert service.admission.admitted == 5
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        overloaded = [r for r in results if isinstance(r, Overloaded)]
        assert len(overloaded) == 195 and overloaded[0].status == 503 and overloaded[0].headers["Retry-After"]
        assert service.admission.admitted == 0


async def test_waiting_for_a_slot_is_bounded(tmp_path):
    async with scripted_service(tmp_path, max_concurrent_requests="1", queue_timeout_s="0.3") as service:
        first = asyncio.create_task(speak(service, LONG * 3))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="no free slot within 0.3 s"):
            await speak(service, "Hello there.")
        assert 0.25 < time.perf_counter() - started < 2
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert service.admission.admitted == 0


async def test_waiting_for_the_previous_turn_is_bounded(tmp_path):
    async with scripted_service(tmp_path, queue_timeout_s="0.3") as service:
        first = asyncio.create_task(speak(service, LONG * 3, session_id="slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="previous turn of session 'slow'"):
            await speak(service, "Hello there.", session_id="slow")
        assert await speak(service, "Another conversation is not held up.", session_id="other") > 0
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert service.admission.admitted == 0 and len(service.turn_order) == 0
