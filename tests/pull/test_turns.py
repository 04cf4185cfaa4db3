"""Turns (pure logic): the earliest layer gets the write path first, and a cancelled waiter
neither keeps a slot nor loses one."""

from __future__ import annotations

import asyncio

import pytest

from imaged.pull.turns import Turns


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_served_lowest_index_first() -> None:
    turns = Turns(1)
    order: list[int] = []
    await turns.acquire(99)  # held while the others queue up, in scrambled order

    async def take(i: int) -> None:
        async with turns.turn(i):
            order.append(i)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(take(i)) for i in (5, 2, 7, 0, 3)]
    await _settle()
    assert order == []
    turns.release()
    await asyncio.gather(*tasks)
    assert order == [0, 2, 3, 5, 7]


async def test_equal_indexes_are_first_come_first_served() -> None:
    turns = Turns(1)
    order: list[str] = []
    await turns.acquire(0)

    async def take(name: str) -> None:
        async with turns.turn(1):
            order.append(name)

    tasks = [asyncio.create_task(take(n)) for n in "abc"]
    await _settle()
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]


async def test_slots_bound_how_many_hold_a_turn_at_once() -> None:
    turns = Turns(2)
    holding = peak = 0

    async def take(i: int) -> None:
        nonlocal holding, peak
        async with turns.turn(i):
            holding += 1
            peak = max(peak, holding)
            await asyncio.sleep(0.001)
            holding -= 1

    await asyncio.gather(*(take(i) for i in range(10)))
    assert peak == 2
    # All slots are free again: two acquire at once without waiting.
    await asyncio.wait_for(asyncio.gather(turns.acquire(0), turns.acquire(1)), 1)


async def test_a_cancelled_waiter_is_skipped() -> None:
    turns = Turns(1)
    await turns.acquire(0)
    early = asyncio.create_task(turns.acquire(1))
    late = asyncio.create_task(turns.acquire(2))
    await _settle()
    early.cancel()
    await _settle()
    turns.release()
    await asyncio.wait_for(late, 1)  # the turn went past the cancelled waiter
    assert early.cancelled()


async def test_a_turn_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    turns = Turns(1)
    await turns.acquire(0)
    granted = asyncio.create_task(turns.acquire(1))
    nxt = asyncio.create_task(turns.acquire(2))
    await _settle()
    turns.release()
    await asyncio.sleep(0)  # the turn is handed to `granted`'s future...
    granted.cancel()  # ...whose task is cancelled before it resumes
    await _settle()
    assert granted.cancelled()
    await asyncio.wait_for(nxt, 1)  # the turn was passed on, not lost
    turns.release()
    await asyncio.wait_for(turns.acquire(3), 1)


async def test_the_earliest_coming_back_keeps_the_turn() -> None:
    """Layer 0 gives its turn back between pieces and asks again at once: a later layer waiting
    meanwhile does not get it (handing it on at once made the two earliest layers alternate)."""
    turns = Turns(1)
    order: list[int] = []

    async def layer(i: int, pieces: int) -> None:
        for _ in range(pieces):
            async with turns.turn(i):
                order.append(i)
                await asyncio.sleep(0)

    first = asyncio.create_task(layer(0, 3))  # takes the turn first...
    later = asyncio.create_task(layer(1, 2))  # ...and this one waits for it from then on
    await asyncio.gather(first, later)
    assert order == [0, 0, 0, 1, 1]


def test_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Turns(0)
