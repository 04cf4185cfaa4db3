"""Progress (pure logic): completions go out at once, ongoing states are held one interval and
replaced by anything newer, so a quick step costs no message; a lasting one is rate-bounded.

The clock is fake: what is sent is decided by it alone, the real timer only says when to look.
"""

from __future__ import annotations

import asyncio

from imaged.pull.progress import LayerState, Progress, Status

INTERVAL = 0.01  # rate 100/s: the real timers below fire within a few milliseconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(status: Status, offset: int = 0, layer: str = "a", elapsed: float = 0.0) -> LayerState:
    return LayerState(layer, status, offset, 100, elapsed)


class Sink:
    """Takes what the progress hands out as it comes, as the Pull stream does."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.got: list[LayerState] = []
        self.task = asyncio.create_task(self._take())

    async def _take(self) -> None:
        while (s := await self.progress.next()) is not None:
            self.got.append(s)

    async def all(self) -> list[LayerState]:
        self.progress.close()
        await self.task
        return self.got


async def fire_timers() -> None:
    await asyncio.sleep(INTERVAL * 3)


async def test_a_quick_step_is_reported_by_its_completion_alone() -> None:
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    out = Sink(p)
    p.update(state(Status.DOWNLOADING, 0))
    clock.now = 0.004
    p.update(state(Status.DOWNLOADING, 60))
    p.update(state(Status.DOWNLOAD_COMPLETE, 100))
    clock.now = 0.006
    p.update(state(Status.EXTRACTING, 100))
    clock.now = 0.009
    p.update(state(Status.EXTRACT_COMPLETE, 100, elapsed=0.003))
    clock.now = 1.0
    await fire_timers()
    assert await out.all() == [
        state(Status.DOWNLOAD_COMPLETE, 100),
        state(Status.EXTRACT_COMPLETE, 100, elapsed=0.003),
    ]


async def test_a_lasting_step_is_reported_after_one_interval_with_its_newest_state() -> None:
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    out = Sink(p)
    p.update(state(Status.DOWNLOADING, 0))
    clock.now = 0.005
    p.update(state(Status.DOWNLOADING, 10))
    await fire_timers()  # the timer fired, but by the clock nothing is due yet
    clock.now = INTERVAL
    await fire_timers()
    p.update(state(Status.DOWNLOAD_COMPLETE, 100))
    assert await out.all() == [state(Status.DOWNLOADING, 10), state(Status.DOWNLOAD_COMPLETE, 100)]


async def test_an_ongoing_state_is_sent_at_most_once_per_interval() -> None:
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    out = Sink(p)
    p.update(state(Status.DOWNLOADING, 0))
    clock.now = INTERVAL
    await fire_timers()
    for offset in (20, 30, 40):  # within the next interval: only the newest goes, when it is due
        clock.now += 0.002
        p.update(state(Status.DOWNLOADING, offset))
    await fire_timers()
    clock.now = 2 * INTERVAL
    await fire_timers()
    clock.now = 2 * INTERVAL + 0.001
    p.update(state(Status.DOWNLOADING, 50))
    clock.now = 3 * INTERVAL
    await fire_timers()
    p.update(state(Status.DOWNLOADING, 50))  # what was sent last: nothing new to say
    clock.now = 4 * INTERVAL
    await fire_timers()
    assert [s.offset for s in await out.all()] == [0, 40, 50]


async def test_layers_are_held_and_released_independently() -> None:
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    out = Sink(p)
    p.update(state(Status.DOWNLOADING, 5, layer="slow"))
    clock.now = 0.008
    p.update(state(Status.DOWNLOADING, 5, layer="late"))  # due at 0.018, not with "slow"
    clock.now = INTERVAL
    await fire_timers()
    p.update(state(Status.ALREADY_EXISTS, 100, layer="late"))
    assert await out.all() == [
        state(Status.DOWNLOADING, 5, layer="slow"),
        state(Status.ALREADY_EXISTS, 100, layer="late"),
    ]


async def test_close_sends_what_is_held_then_ends() -> None:
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    out = Sink(p)
    p.update(state(Status.DOWNLOADING, 7))  # a pull that failed mid-download: its last state
    assert await out.all() == [state(Status.DOWNLOADING, 7)]


async def test_a_completion_repeated_is_sent_once() -> None:
    p = Progress(1 / INTERVAL, Clock())
    out = Sink(p)
    p.update(state(Status.DOWNLOAD_COMPLETE, 100))
    p.update(state(Status.DOWNLOAD_COMPLETE, 100))
    assert await out.all() == [state(Status.DOWNLOAD_COMPLETE, 100)]


async def test_a_client_that_stops_reading_finds_the_newest_state_per_layer() -> None:
    # Nothing is taken while a long pull runs for 10 minutes of fake time: what waits stays
    # bounded by the layers (their completions and newest ongoing states), not by time.
    clock = Clock()
    p = Progress(1 / INTERVAL, clock)
    for step in range(60_000):
        clock.now = step * INTERVAL
        for layer in ("a", "b"):
            p.update(state(Status.DOWNLOADING, step, layer=layer))
        if step == 100:
            p.update(state(Status.DOWNLOAD_COMPLETE, 100, layer="c"))
        p._flush()  # what the timer would do; the fake clock decides what is due
    assert p.waiting() == 3
    out = Sink(p)
    got = await out.all()
    assert got == [
        state(Status.DOWNLOADING, 59_999, layer="a"),
        state(Status.DOWNLOADING, 59_999, layer="b"),
        state(Status.DOWNLOAD_COMPLETE, 100, layer="c"),
    ]


def test_status_values_are_the_wire_enum() -> None:
    from imaged.pb.machine import image_pb2

    wire = image_pb2.ImageServicePullLayerProgress.Status
    assert {s.name: s.value for s in Status} == {n: wire.Value(n) for n in wire.keys()}
