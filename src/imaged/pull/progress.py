"""Per-layer progress with change-only, rate-bounded updates.

The reference re-sends every layer's state every 100 ms; a 10 GB pull must not flood the client,
and a pull of many small layers must not spend its time reporting. So:

- a completion (download complete, extract complete, already exists) is sent at once, so every
  layer's final state and each finished download reach the client as they happen;
- an ongoing state (downloading, extracting) waits up to one interval (`1/rate` s) and is replaced
  by anything newer for that layer meanwhile: a step that ends within the interval is reported
  only by its completion, one that lasts is reported after the interval and then at most `rate`
  times a second. A small layer thus costs two messages, not four;
- what waits to be sent is bounded by the layers, not by time: a client that stops reading
  finds, per layer, its completions and its newest ongoing state, not every state since.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class Status(enum.IntEnum):
    # Values are the wire enum ImageServicePullLayerProgress.Status.
    DOWNLOADING = 0
    DOWNLOAD_COMPLETE = 1
    EXTRACTING = 2
    EXTRACT_COMPLETE = 3
    ALREADY_EXISTS = 4


ONGOING = frozenset({Status.DOWNLOADING, Status.EXTRACTING})


@dataclass(frozen=True, slots=True)
class LayerState:
    layer_id: str
    status: Status
    offset: int
    total: int
    elapsed: float = 0.0


class Progress:
    """Collects layer states from the pull and hands out what is worth sending."""

    def __init__(self, rate: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = 1.0 / rate
        self._clock = clock
        self._last_sent: dict[str, tuple[LayerState, float]] = {}
        # Held ongoing states: layer id -> (newest state, when it is due).
        self._pending: dict[str, tuple[LayerState, float]] = {}
        # Ready to send, in order; an ongoing state not yet taken is replaced where it stands.
        self._ready: collections.deque[_Slot] = collections.deque()
        self._queued_ongoing: dict[str, _Slot] = {}
        self._available = asyncio.Event()
        self._flusher: asyncio.TimerHandle | None = None
        self._flush_at = 0.0

    def update(self, state: LayerState) -> None:
        now = self._clock()
        lid = state.layer_id
        last = self._last_sent.get(lid)
        held = self._pending.pop(lid, None)
        if last is not None and last[0] == state:
            return
        if state.status not in ONGOING:
            self._emit(state, now)
            return
        if last is not None and last[0].status == state.status:
            due = last[1] + self.min_interval
        elif held is not None and held[0].status == state.status:
            due = held[1]
        else:
            due = now + self.min_interval
        if due <= now:
            self._emit(state, now)
            return
        self._pending[lid] = (state, due)
        self._schedule(due, now)

    def _emit(self, state: LayerState, now: float) -> None:
        self._last_sent[state.layer_id] = (state, now)
        lid = state.layer_id
        slot = self._queued_ongoing.pop(lid, None)
        if slot is not None and state.status in ONGOING:
            slot.state = state
            self._queued_ongoing[lid] = slot
            return
        slot = _Slot(state)
        if state.status in ONGOING:
            self._queued_ongoing[lid] = slot
        self._put(slot)

    def _put(self, slot: _Slot) -> None:
        self._ready.append(slot)
        self._available.set()

    def _schedule(self, due: float, now: float) -> None:
        if self._flusher is not None:
            if self._flush_at <= due:
                return
            self._flusher.cancel()
        self._flush_at = due
        self._flusher = asyncio.get_running_loop().call_later(max(0.0, due - now), self._flush)

    def _flush(self) -> None:
        self._flusher = None
        now = self._clock()
        # A timer may fire a hair early by this clock; what is due within a millisecond goes now.
        for lid, (state, due) in list(self._pending.items()):
            if due <= now + 1e-3:
                del self._pending[lid]
                self._emit(state, now)
        if self._pending:
            self._schedule(min(due for _, due in self._pending.values()), now)

    def close(self) -> None:
        """Send what is held (the newest states) and mark the end of the stream."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        now = self._clock()
        for state, _ in self._pending.values():
            self._emit(state, now)
        self._pending.clear()
        self._put(_Slot(None))

    async def next(self) -> LayerState | None:
        """The next state to send; None once closed and all is taken."""
        while not self._ready:
            self._available.clear()
            await self._available.wait()
        slot = self._ready.popleft()
        if slot.state is not None and self._queued_ongoing.get(slot.state.layer_id) is slot:
            del self._queued_ongoing[slot.state.layer_id]
        return slot.state

    def waiting(self) -> int:
        """How many states wait to be taken (bounded by the layers)."""
        return len(self._ready)


@dataclass(slots=True)
class _Slot:
    state: LayerState | None
