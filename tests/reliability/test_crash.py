"""Crashes and disconnections: kill -9 of the daemon mid-pull (and mid-import), containerd restarted
under a pull, a client that vanishes mid-pull. Afterwards containerd holds no lease, no ingest and
no content or snapshot that no image references.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.reliability.conftest import FAST_REGISTRIES, unique_image
from tests.reliability.crash import (
    PullRun,
    Status,
    kill_during_imports,
    kill_during_pulls,
)
from tests.reliability.faultproxy import FaultProxy, blob_path
from tests.reliability.hygiene import ctr_remove_all, ingest_offsets, inspect, wait_clean
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import Registry

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True

NS = "system"


@pytest.fixture(scope="module")
def proxy(rel_registry: Registry) -> Iterator[FaultProxy]:
    # 24 MiB/s stretches a 24 MiB layer over about a second: room for a random moment.
    with FaultProxy(rel_registry.host, rate=24 << 20) as p:
        yield p


@pytest.fixture
def daemon(cd: PrivateContainerd) -> Iterator[DaemonProcess]:
    d = DaemonProcess(cd.socket, {"registries": FAST_REGISTRIES})
    d.start()
    yield d
    d.stop()
    ctr_remove_all(cd.socket, NS)


def test_kill_9_at_random_moments_of_a_pull(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("IMAGED_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    image = unique_image(size=24 << 20)
    archives.push(rel_registry, "rel/kill", "v1", image)
    ref = f"{proxy.host}/rel/kill:v1"
    pids = set()
    for result in kill_during_pulls(cd, daemon, ref, image.digest, rounds=3, rng=rng):
        assert daemon.proc is not None
        pids.add(daemon.proc.pid)
        assert result.report.clean, f"seed {seed}, killed at {result.moment}: {result.report}"
    assert len(pids) == 3, "each round ran a new daemon process"
    # After the last round's image was removed, nothing at all is left behind.
    final = inspect(cd.socket, NS)
    assert final.clean and not cd.ctr("content", "ls", "-q", namespace=NS).stdout.split(), final


def test_kill_9_at_random_moments_of_an_import(cd, daemon) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("IMAGED_TEST_SEED", time.time_ns() % 1_000_000))
    image = unique_image(size=16 << 20)
    data = archives.oci_archive([("import.test/rel/kill:v1", image)])
    for i, rep in enumerate(
        kill_during_imports(cd, daemon, data, image.digest, rounds=3, rng=random.Random(seed))
    ):
        assert rep.clean, f"seed {seed} round {i}: {rep}"


def test_containerd_restart_during_pull(proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    own = PrivateContainerd()
    own.start()
    d = DaemonProcess(own.socket, {"registries": FAST_REGISTRIES})
    d.start()
    try:
        image = unique_image(size=24 << 20)
        archives.push(rel_registry, "rel/cdrestart", "v1", image)
        ref = f"{proxy.host}/rel/cdrestart:v1"
        run = PullRun(d, ref)
        assert run.wait(lambda: run.seen(Status.DOWNLOADING, 1)), run.error
        own.stop()
        run.join(60)
        assert not run.thread.is_alive(), "the pull in flight must end when containerd goes away"
        assert run.error is not None, "the pull cannot have succeeded"
        assert run.error.code() == grpc.StatusCode.UNAVAILABLE, run.error.details()
        deadline = time.monotonic() + 15
        while d.health() != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as e:
            list(d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM), timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and own.socket in e.value.details()
        own.start()
        deadline = time.monotonic() + 20
        while d.health() != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.health() == "SERVING", "the daemon recovers without a restart"
        assert d.proc is not None and d.proc.poll() is None
        again = PullRun(d, ref)
        again.join(120)
        assert again.error is None, again.error
        assert again.name == f"{proxy.host}/rel/cdrestart@{image.digest}"
        # The failed pull's lease (its deletion failed while containerd was away) goes once it is back.
        rep = wait_clean(own.socket, NS, timeout=15)
        assert rep.clean, rep
    finally:
        d.stop()
        own.destroy()


CLIENT = """
import sys, grpc
from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.support.daemon import SYSTEM
ch = grpc.insecure_channel("unix:" + sys.argv[1])
req = image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=sys.argv[2])
for msg in image_pb2_grpc.ImageServiceStub(ch).Pull(req, timeout=120):
    print(msg.pull_progress.progress.offset, flush=True)
"""


def test_client_vanishing_mid_pull_leaves_no_lease(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image(size=24 << 20)
    archives.push(rel_registry, "rel/vanish", "v1", image)
    ref = f"{proxy.host}/rel/vanish:v1"
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, daemon.socket, ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
    )
    try:
        assert client.stdout is not None
        for line in client.stdout:
            if int(line) > 0:
                break
        assert inspect(cd.socket, NS, gc=False).leases, "the pull holds a lease while it runs"
        # Progress counts bytes received; what containerd holds arrives in 1 MiB writes after that.
        layer = image.layers[-1].digest
        deadline = time.monotonic() + 60
        while not any(layer in r and n > 0 for r, n in ingest_offsets(cd.socket, NS).items()):
            assert time.monotonic() < deadline, "containerd never held any byte of the layer"
            time.sleep(0.02)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    rep = wait_clean(cd.socket, NS, timeout=15, leases_only=True)
    assert rep.leases == [], rep
    assert ref not in cd.ctr("images", "ls", "-q", namespace=NS).stdout
    # What had arrived is kept as an ingest and the next pull resumes it.
    assert any(layer in i for i in rep.ingests), rep
    before = len(proxy.entries(blob_path(layer), "GET"))
    run = PullRun(daemon, ref)
    run.join(120)
    assert run.error is None and run.name == f"{proxy.host}/rel/vanish@{image.digest}", run.error
    resumed = proxy.entries(blob_path(layer), "GET")[before:]
    assert len(resumed) == 1 and (resumed[0].range_start or 0) > 0, resumed
    assert wait_clean(cd.socket, NS).clean
