"""Verdict cache with single flight.

A verdict (verified, or refused with a reason) is a pure function of the image digest, the
matched rule and the trust root, so it is cached under those, with a long TTL for success and
a short one for failure (a signature may be pushed right after the image). Registry errors
are never cached. Concurrent identical requests (a node starting many pods of one image)
share one verification; a caller that gives up does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """What verification concluded: `verified` with a message saying how or why not."""

    verified: bool
    message: str


@dataclass(slots=True)
class _Entry:
    outcome: Outcome
    expires: float


class VerdictCache:
    def __init__(
        self,
        success_ttl: float,
        failure_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.success_ttl = success_ttl
        self.failure_ttl = failure_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Task[Outcome]] = {}
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every verdict; verifications under way finish for their callers only."""
        self._entries.clear()
        self._inflight.clear()
        self._generation += 1

    def peek(self, key: Hashable) -> Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.outcome

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """The cached outcome for `key`, else the one being computed, else compute it."""
        cached = self.peek(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._inflight[key] = task
            generation = self._generation
            task.add_done_callback(lambda t: self._finished(key, t, generation))
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Task[Outcome], generation: int) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # errors reach the waiters; nothing is remembered
        if generation != self._generation or self.max_entries == 0:
            return
        outcome = task.result()
        ttl = self.success_ttl if outcome.verified else self.failure_ttl
        if ttl <= 0:
            return
        self._entries[key] = _Entry(outcome, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
