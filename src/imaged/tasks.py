"""One way to run a group of awaitables: bounded, results in order, one error raised as itself.

asyncio.TaskGroup raises an exception group; every caller wants one error it can map to a status,
and the first failure is the cause (the failures of siblings being cancelled follow from it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather(calls: Iterable[Callable[[], Awaitable[T]]], *, limit: int | None = None) -> list[T]:
    """Run every call, at most `limit` at once (None: all at once); return their results in order.

    The first failure, by completion, cancels the calls still running, and is raised as itself
    (not in a group) once they have all ended; calls not yet started are never started.
    """
    sem = asyncio.Semaphore(limit) if limit is not None else None

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        if sem is None:
            return await call()
        async with sem:
            return await call()

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(c)) for c in calls]
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]
