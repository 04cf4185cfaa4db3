"""Pull progress for pipes and logs: one line per layer state change, downloads at most once a second.

Pure (no grpc, no rich): the plain view is what scripts and CI logs see, so it is unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from imaged.cli.formatting import human_size, percent
from imaged.pull.progress import Status

__all__ = ["FINAL", "LayerUpdate", "PlainPullView", "PullView", "Status", "describe"]


FINAL = (Status.EXTRACT_COMPLETE, Status.ALREADY_EXISTS)


@dataclass(frozen=True, slots=True)
class LayerUpdate:
    layer_id: str
    status: int
    offset: int = 0
    total: int = 0
    elapsed: float = 0.0


class PullView(Protocol):
    def update(self, u: LayerUpdate) -> None: ...

    def close(self) -> None: ...


def describe(u: LayerUpdate) -> str:
    """`layer 1a2b3c4d5e6f downloading 1.2 MB/3.4 MB (35.3%)` and the like."""
    head = f"layer {u.layer_id}"
    match u.status:
        case Status.DOWNLOADING if u.total > 0:
            done = min(u.offset, u.total)
            pct = percent(done, u.total)
            return f"{head} downloading {human_size(done)}/{human_size(u.total)} ({pct:.1f}%)"
        case Status.DOWNLOADING:
            return f"{head} downloading {human_size(u.offset)}"
        case Status.DOWNLOAD_COMPLETE:
            return f"{head} download complete"
        case Status.EXTRACTING:
            return f"{head} extracting ({u.elapsed:.1f}s)"
        case Status.EXTRACT_COMPLETE:
            return f"{head} pull complete"
        case Status.ALREADY_EXISTS:
            return f"{head} already exists"
    return f"{head} status {u.status}"


class PlainPullView:
    """Prints state changes at once and repeats of an ongoing state at most every `interval` seconds."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._interval = interval
        self._clock = clock
        self._last: dict[str, tuple[int, float]] = {}

    def update(self, u: LayerUpdate) -> None:
        now = self._clock()
        last = self._last.get(u.layer_id)
        if last is not None and last[0] == u.status:
            ongoing = u.status in (Status.DOWNLOADING, Status.EXTRACTING)
            if not ongoing or now - last[1] < self._interval:
                return
        self._last[u.layer_id] = (u.status, now)
        self._write(describe(u))

    def close(self) -> None:
        pass
