"""Crash loops shared by the fast suite (3 rounds) and the soak (10): kill -9 the daemon at a random
moment of a Pull or an Import, restart it, repeat the operation, and check containerd is left clean.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.reliability.hygiene import Report, ctr_remove_all, wait_clean
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess

Status = image_pb2.ImageServicePullLayerProgress.Status
PHASES = ("start", "download", "unpack")


def channel(d: DaemonProcess) -> grpc.Channel:
    """A channel of our own: DaemonProcess.kill() closes its shared one before the signal."""
    return grpc.insecure_channel(f"unix:{d.socket}", options=[("grpc.max_receive_message_length", 64 << 20)])


@dataclass
class PullRun:
    """A Pull running in a thread; the test watches its progress and decides when to strike."""

    d: DaemonProcess
    ref: str
    inst: common_pb2.ContainerdInstance = field(default_factory=lambda: SYSTEM)
    messages: list[image_pb2.ImageServicePullResponse] = field(default_factory=list)
    name: str | None = None
    error: grpc.RpcError | None = None
    started: float = 0.0

    def __post_init__(self) -> None:
        self._ch = channel(self.d)
        self.call = image_pb2_grpc.ImageServiceStub(self._ch).Pull(
            image_pb2.ImageServicePullRequest(containerd=self.inst, image_ref=self.ref), timeout=180
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        try:
            for msg in self.call:
                if msg.WhichOneof("response") == "name":
                    self.name = msg.name
                else:
                    self.messages.append(msg)
        except grpc.RpcError as e:
            self.error = e

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def seen(self, status: int, min_offset: int = 0) -> bool:
        return any(
            m.pull_progress.progress.status == status and m.pull_progress.progress.offset >= min_offset
            for m in list(self.messages)
        )

    def wait(self, cond: Callable[[], bool], timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if self.done or time.monotonic() > deadline:
                return cond()
            time.sleep(0.005)
        return True

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        self._ch.close()


def strike(run: PullRun, phase: str, rng: random.Random) -> str:
    """Wait for `phase` of the pull, then a random extra delay; return where the pull was.

    `download` and `unpack` watch the biggest layer (the one that takes time): its first bytes,
    its extraction starting."""

    def biggest() -> int:
        return max((m.pull_progress.progress.total for m in list(run.messages)), default=0)

    def seen_big(status: int) -> bool:
        big = biggest()
        return any(
            m.pull_progress.progress.status == status
            and m.pull_progress.progress.total == big > 0
            and (status != Status.DOWNLOADING or m.pull_progress.progress.offset > 0)
            for m in list(run.messages)
        )

    if phase == "start":
        time.sleep(rng.uniform(0, 0.15))
    elif phase == "download":
        run.wait(lambda: seen_big(Status.DOWNLOADING))
        time.sleep(rng.uniform(0, 0.5))
    else:
        run.wait(lambda: seen_big(Status.EXTRACTING))
        time.sleep(rng.uniform(0, 0.06))  # extracting 24 MiB takes a few tenths of a second
    last: dict[str, str] = {}
    for m in list(run.messages):
        p = m.pull_progress.progress
        last[m.pull_progress.layer_id[:6]] = f"{Status.Name(p.status)} {p.offset >> 20}/{p.total >> 20} MiB"
    done = " (the pull had already finished)" if run.done else ""
    return f"{phase} +{time.monotonic() - run.started:.2f}s{done} {last}"


@dataclass
class RoundResult:
    phase: str
    moment: str
    report: Report


def kill_during_pulls(
    cd: PrivateContainerd,
    d: DaemonProcess,
    ref: str,
    digest: str,
    *,
    rounds: int,
    rng: random.Random,
    before_each: Callable[[], None] | None = None,
) -> Iterator[RoundResult]:
    """`rounds` times: pull `ref`, kill -9 at a random moment, restart, pull again, check, clean up."""
    ns = "system"
    for i in range(rounds):
        phase = PHASES[i % len(PHASES)]
        if before_each is not None:
            before_each()
        run = PullRun(d, ref)
        moment = strike(run, phase, rng)
        d.kill()
        run.join(30)
        d.start()
        again = PullRun(d, ref)
        again.join(180)
        if again.error is not None:
            raise AssertionError(f"round {i} ({moment}): the repeated pull failed: {again.error}")
        assert again.name == f"{ref.rsplit(':', 1)[0]}@{digest}", again.name
        rep = wait_clean(cd.socket, ns)
        yield RoundResult(phase, moment, rep)
        ctr_remove_all(cd.socket, ns)
        wait_clean(cd.socket, ns)


def import_unavailable(d: DaemonProcess) -> str | None:
    """None if Import works, else why the import half is skipped."""
    try:
        image_pb2_grpc.ImageServiceStub(d.channel).Import(
            iter([image_pb2.ImageServiceImportRequest(containerd=SYSTEM)]), timeout=30
        )
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return f"Import answers UNIMPLEMENTED ({e.details()}): the import half waits for it"
    return None


def import_chunks(
    data: bytes, size: int, pause: float = 0.0
) -> Iterator[image_pb2.ImageServiceImportRequest]:
    yield image_pb2.ImageServiceImportRequest(containerd=SYSTEM)
    for i in range(0, len(data), size):
        if pause:
            time.sleep(pause)
        yield image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data[i : i + size]))


def kill_during_imports(
    cd: PrivateContainerd, d: DaemonProcess, data: bytes, digest: str, *, rounds: int, rng: random.Random
) -> Iterator[Report]:
    """`rounds` times: stream archive `data` slowly, kill -9 at a random moment, restart, import it
    again, yield the namespace's report, clean up."""
    ns = "system"
    for i in range(rounds):

        def go() -> None:
            with contextlib.suppress(grpc.RpcError), channel(d) as ch:
                image_pb2_grpc.ImageServiceStub(ch).Import(import_chunks(data, 256 << 10, 0.01), timeout=120)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        time.sleep(rng.uniform(0.05, 0.8))
        d.kill()
        t.join(30)
        d.start()
        resp = image_pb2_grpc.ImageServiceStub(d.channel).Import(import_chunks(data, 1 << 20), timeout=120)
        if not resp.name or digest not in cd.ctr("images", "ls", namespace=ns).stdout:
            raise AssertionError(f"round {i}: the repeated import did not record {digest}: {resp.name!r}")
        yield wait_clean(cd.socket, ns)
        ctr_remove_all(cd.socket, ns)
