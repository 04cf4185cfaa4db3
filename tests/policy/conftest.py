"""Shared pieces of the policy-hole regressions (issue 19): a registry, a signing key, and daemons
started per test with the policy under attack, all real (containerd, docker-registry, imaged)."""

from __future__ import annotations

import pathlib
import signal
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import grpc
import pytest

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2
from tests.reliability.hygiene import inspect
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore, StaticKey

NS = "system"
FAST = {
    "retries": {"attempts": 1, "base_delay": 0.01, "max_delay": 0.01},
    "timeouts": {"connect": 2, "read": 5},
}


@pytest.fixture(scope="module")
def reg() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore(seed=b"policy-holes")


@pytest.fixture(scope="module")
def key(ps: PrivateSigstore) -> StaticKey:
    return ps.static_key("policy-holes")


def key_rule(pattern: str, key: StaticKey, **extra: Any) -> dict[str, Any]:
    return {"image": pattern, "publicKey": {"certificate": key.public_pem.decode()}, **extra}


@pytest.fixture
def start(containerd: PrivateContainerd) -> Iterator[Callable[..., DaemonProcess]]:
    """`start(verification, **sections)`: a daemon with that policy, stopped after the test."""
    started: list[DaemonProcess] = []

    def make(verification: dict[str, Any], **sections: Any) -> DaemonProcess:
        d = DaemonProcess(containerd.socket, {"verification": verification, "registries": FAST, **sections})
        d.start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def reload(d: DaemonProcess, verification: dict[str, Any]) -> None:
    """Give the running daemon another policy (SIGHUP) and wait until it says it took it."""
    import yaml

    d.config["verification"] = verification
    d.config_path.write_text(yaml.safe_dump(d.config))
    before = d.logs().count("configuration reloaded")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while d.logs().count("configuration reloaded") == before:
        assert time.monotonic() < deadline, d.logs()[-2000:]
        assert "reload refused" not in d.logs(), d.logs()[-2000:]
        time.sleep(0.05)


def pull(d: DaemonProcess, ref: str) -> str:
    name = ""
    for msg in d.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=120
    ):
        if msg.WhichOneof("response") == "name":
            name = msg.name
    return name


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def import_bytes(d: DaemonProcess, data: bytes) -> str:
    msgs = [image_pb2.ImageServiceImportRequest(containerd=SYSTEM)] + [
        image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data[i : i + 65536]))
        for i in range(0, len(data), 65536)
    ]
    return d.images.Import(iter(msgs), timeout=120).name


def records(d: DaemonProcess) -> dict[str, image_pb2.ImageServiceListResponse]:
    return {r.name: r for r in d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}


def push_signed(reg: Registry, ps: PrivateSigstore, key: StaticKey, repo: str, marker: str) -> str:
    """A runnable image at `repo:v1` with a legacy signature by `key`; its digest."""
    digest = archives.push(reg, repo, "v1", archives.simple_image(marker))
    sig = ps.sign_legacy(digest, f"{reg.host}/{repo}", key, tlog=False)
    OciPusher(reg).push_legacy_signatures(repo, digest, [sig])
    return digest


def push_unsigned(reg: Registry, repo: str, marker: str, tag: str = "v1") -> str:
    return archives.push(reg, repo, tag, archives.simple_image(marker))


def leftovers(containerd: PrivateContainerd) -> set[str]:
    """Leases, ingests and orphan blobs and snapshots in the namespace."""
    rep = inspect(containerd.socket, NS)
    return {*rep.leases, *rep.ingests, *rep.orphan_content, *rep.orphan_snapshots}


def no_leftovers(containerd: PrivateContainerd, before: Collection[str] = ()) -> None:
    """No lease, ingest, orphan blob or snapshot in the namespace after a refusal, besides those
    `before` (on the suite's shared containerd, what a test that keeps a partial download on
    purpose left there)."""
    deadline = time.monotonic() + 20
    while (new := leftovers(containerd) - set(before)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not new, new


def log_of(d: DaemonProcess) -> pathlib.Path:
    return d.log_path
