"""Pulls through a fault-injecting proxy: retry what is retryable, resume, never a wrong image.

The daemon pulls `proxy.host/...`; the proxy forwards to a real docker-registry and injects
connection resets, stalls, 5xx/429 bursts, truncated and corrupted bodies. Each pull must end in
success with exactly the pushed image (digest checked, one is run with `ctr run`) or in a clear
error naming the host, leaving no lease, no ingest and nothing garbage collection cannot take.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from tests.pull.test_pull import pull, run
from tests.reliability.conftest import FAST_REGISTRIES, unique_image
from tests.reliability.faultproxy import Fault, FaultProxy, blob_path
from tests.reliability.hygiene import inspect, wait_clean
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import Registry

NS = "system"


@pytest.fixture(scope="module")
def proxy(rel_registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(rel_registry.host) as p:
        yield p


@pytest.fixture(autouse=True)
def _no_faults_left(proxy: FaultProxy) -> Iterator[None]:
    proxy.clear()
    yield
    proxy.clear()


@pytest.fixture(scope="module")
def daemon(cd: PrivateContainerd) -> Iterator[DaemonProcess]:
    d = DaemonProcess(cd.socket, {"registries": FAST_REGISTRIES})
    d.start()
    yield d
    d.stop()


def push(registry: Registry, proxy: FaultProxy, name: str, image: archives.Image) -> str:
    archives.push(registry, f"rel/{name}", "v1", image)
    return f"{proxy.host}/rel/{name}:v1"


def big(image: archives.Image) -> archives.Layer:
    return image.layers[-1]


def assert_exact(
    cd: PrivateContainerd, daemon: DaemonProcess, ref: str, name: str, image: archives.Image
) -> None:
    """The pull named the pushed digest, containerd records it, and the blobs are the pushed ones."""
    repo = ref.rsplit(":", 1)[0]
    assert name == f"{repo}@{image.digest}"
    listed = cd.ctr("images", "ls", namespace=NS).stdout
    line = next(row for row in listed.splitlines() if row.startswith(ref + " "))
    assert image.digest in line
    present = set(cd.ctr("content", "ls", "-q", namespace=NS).stdout.split())
    assert set(image.blobs()) <= present


def assert_failed_cleanly(cd: PrivateContainerd, ref: str) -> None:
    assert ref not in cd.ctr("images", "ls", "-q", namespace=NS).stdout
    rep = wait_clean(cd.socket, NS)
    assert rep.leases == [] and rep.orphan_content == [], rep


def test_connection_resets_mid_blob_resume_with_range(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "reset", image)
    layer = big(image)
    proxy.add(Fault("reset", path=blob_path(layer.digest), method="GET", after=1 << 20, times=2))
    name, _ = pull(daemon, ref, SYSTEM, timeout=120)
    assert_exact(cd, daemon, ref, name, image)
    gets = proxy.entries(blob_path(layer.digest), "GET")
    assert [e.action for e in gets[:2]] == ["reset at 1048576", "reset at 1048576"]
    # Each retry continues where the last one broke off instead of starting again.
    starts = [e.range_start for e in gets]
    assert len(gets) == 3 and starts[0] is None and 0 < starts[1] < starts[2], gets
    assert run(cd, NS, ref).strip() == image.cmd[1]
    assert inspect(cd.socket, NS).clean


def test_truncated_bodies_and_stalls_resume(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "truncate", image)
    layer = big(image)
    proxy.add(
        Fault("truncate", path=blob_path(layer.digest), method="GET", after=1_500_000, times=1),
        Fault("stall", path=blob_path(layer.digest), method="GET", after=500_000, times=1, seconds=30),
    )
    start = time.monotonic()
    name, _ = pull(daemon, ref, SYSTEM, timeout=120)
    assert time.monotonic() - start < 30, "a stalled download must time out (timeouts.read) and resume"
    assert_exact(cd, daemon, ref, name, image)
    gets = proxy.entries(blob_path(layer.digest), "GET")
    # Resumed from what had arrived (the client keeps whole 64 KiB chunks), never from zero.
    starts = [e.range_start for e in gets]
    assert len(gets) == 3 and starts[0] is None, gets
    assert 1_000_000 < starts[1] <= 1_500_000 and starts[1] < starts[2] <= starts[1] + 500_000, gets
    assert inspect(cd.socket, NS).clean


def test_5xx_and_429_bursts_are_retried(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "burst", image)
    proxy.add(
        Fault("status", path="/manifests/", status=500, times=2),
        Fault("status", path=blob_path(image.config_digest), status=429, retry_after="0.1", times=2),
        Fault("status", path=blob_path(big(image).digest), status=503, times=3),
    )
    name, _ = pull(daemon, ref, SYSTEM, timeout=120)
    assert_exact(cd, daemon, ref, name, image)
    assert all(f.hits == f.times for f in proxy.faults), proxy.faults
    assert inspect(cd.socket, NS).clean


def test_endless_5xx_is_unavailable_naming_the_host(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "down", image)
    proxy.add(Fault("status", path="/manifests/", status=502, times=-1))
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM, timeout=60)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proxy.host in e.value.details() and "502" in e.value.details()
    assert len(proxy.entries("/rel/down/manifests/")) == FAST_REGISTRIES["retries"]["attempts"]
    assert_failed_cleanly(cd, ref)


def test_partial_blob_is_resumed_by_the_next_pull(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "partial", image)
    layer = big(image)
    proxy.add(
        Fault("truncate", path=blob_path(layer.digest), method="GET", after=2 << 20, times=1),
        Fault("status", path=blob_path(layer.digest), method="GET", status=503, times=-1),
    )
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM, timeout=60)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
    assert proxy.host in e.value.details() and "at byte " in e.value.details()
    assert ref not in cd.ctr("images", "ls", "-q", namespace=NS).stdout
    assert wait_clean(cd.socket, NS, leases_only=True).leases == []
    proxy.clear()
    before = len(proxy.entries(blob_path(layer.digest), "GET"))
    name, _ = pull(daemon, ref, SYSTEM, timeout=120)
    assert_exact(cd, daemon, ref, name, image)
    again = proxy.entries(blob_path(layer.digest), "GET")[before:]
    # Resumed where containerd's ingest ended: the writer sends 1 MiB messages, and the one in
    # flight when the pull failed may be lost with its stream (seen once: a resume at 1 MiB).
    assert len(again) == 1 and 1 << 20 <= (again[0].range_start or 0) <= 2 << 20, again
    assert inspect(cd.socket, NS).clean


def test_wrong_bytes_are_data_loss_never_an_image(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image()
    ref = push(rel_registry, proxy, "corrupt", image)
    layer = big(image)
    proxy.add(Fault("corrupt", path=blob_path(layer.digest), method="GET", after=3_000_000, times=1))
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM, timeout=60)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value.details()
    assert "rel/corrupt" in e.value.details()
    assert_failed_cleanly(cd, ref)
    rep = inspect(cd.socket, NS)
    assert not [i for i in rep.ingests if layer.digest in i], "the corrupt ingest is aborted"
    assert layer.digest not in cd.ctr("content", "ls", "-q", namespace=NS).stdout
    # The same pull without the fault gives exactly the pushed image.
    name, _ = pull(daemon, ref, SYSTEM, timeout=120)
    assert_exact(cd, daemon, ref, name, image)


def test_wrong_manifest_bytes_are_data_loss(cd, daemon, proxy, rel_registry) -> None:  # type: ignore[no-untyped-def]
    image = unique_image(size=1024)
    ref = push(rel_registry, proxy, "badmanifest", image)
    # HEAD resolves the tag to the right digest; the GET of that digest then serves other bytes.
    proxy.add(Fault("corrupt", path=f"/manifests/{image.digest}$", method="GET", after=40, times=-1))
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM, timeout=60)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value.details()
    assert image.digest in e.value.details() and proxy.host in e.value.details()
    assert_failed_cleanly(cd, ref)
    # The tag moves to another image: a pull pinned to the first digest still gets exactly that one.
    archives.push(rel_registry, "rel/badmanifest", "v1", unique_image(size=1024))
    proxy.clear()
    pinned = f"{proxy.host}/rel/badmanifest@{image.digest}"
    name, _ = pull(daemon, pinned, SYSTEM, timeout=60)
    assert name == pinned
    record = next(r for r in cd.ctr("images", "ls", namespace=NS).stdout.splitlines() if r.startswith(pinned))
    assert image.digest in record
