"""TurnOrder: one reply at a time per conversation, other conversations unaffected, nothing kept."""

from __future__ import annotations

import asyncio

from chat2audio.sessions import TurnOrder


async def test_turns_of_one_conversation_run_one_after_another_and_leave_nothing_behind():
    order = TurnOrder()
    log: list[str] = []

    async def turn(speaker: str, session: str, name: str, seconds: float) -> None:
        async with order.turn(speaker, session):
            log.append(f"{name} start")
            await asyncio.sleep(seconds)
            log.append(f"{name} end")

    first = asyncio.create_task(turn("Aria", "s1", "first", 0.05))
    await asyncio.sleep(0.01)
    await asyncio.gather(
        turn("Aria", "s1", "second", 0.0),
        turn("Orion", "s1", "other speaker", 0.0),  # another conversation: no waiting
        turn("Aria", "s2", "other session", 0.0),
    )
    await first
    assert log.index("first end") < log.index("second start")
    assert log.index("other speaker end") < log.index("first end")
    assert log.index("other session end") < log.index("first end")
    assert len(order) == 0


async def test_a_waiting_turn_that_is_cancelled_releases_its_place():
    order = TurnOrder()
    async with order.turn("Aria", "s1"):
        waiting = asyncio.create_task(_enter(order))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert len(order) == 1
    assert len(order) == 0
    await asyncio.wait_for(_enter(order), 1)


async def _enter(order: TurnOrder) -> None:
    async with order.turn("Aria", "s1"):
        pass
