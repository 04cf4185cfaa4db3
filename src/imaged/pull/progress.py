"""Per-layer progress with change-only, rate-bounded updates.

The reference re-sends every layer's state every 100 ms; a 10 GB pull must not flood the client,
so here a state is sent only when it changed, at most `rate` times a second per layer while
downloading, and a status change (and so each layer's final state) is always sent at once.
"""

from __future__ import annotations

import asyncio
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
        self._pending: dict[str, LayerState] = {}
        self._out: asyncio.Queue[LayerState | None] = asyncio.Queue()
        self._flusher: asyncio.TimerHandle | None = None

    def update(self, state: LayerState) -> None:
        now = self._clock()
        last = self._last_sent.get(state.layer_id)
        if last is not None and last[0] == state:
            return
        if last is None or last[0].status != state.status or now - last[1] >= self.min_interval:
            self._pending.pop(state.layer_id, None)
            self._emit(state, now)
            return
        # Same status, too soon: keep the newest state and send it when the interval is up.
        self._pending[state.layer_id] = state
        if self._flusher is None:
            delay = max(0.0, self.min_interval - (now - last[1]))
            self._flusher = asyncio.get_running_loop().call_later(delay, self._flush)

    def _emit(self, state: LayerState, now: float) -> None:
        self._last_sent[state.layer_id] = (state, now)
        self._out.put_nowait(state)

    def _flush(self) -> None:
        self._flusher = None
        now = self._clock()
        for layer_id, state in list(self._pending.items()):
            last = self._last_sent.get(layer_id)
            if last is None or now - last[1] >= self.min_interval - 1e-3:
                del self._pending[layer_id]
                self._emit(state, now)
        if self._pending and self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(self.min_interval, self._flush)

    def close(self) -> None:
        """Send what is pending (final states) and mark the end of the stream."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        for state in self._pending.values():
            self._emit(state, self._clock())  # type: ignore[call-arg]
        self._pending.clear()
        self._out.put_nowait(None)

    async def next(self) -> LayerState | None:
        return await self._out.get()
