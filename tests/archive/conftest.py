"""Fixtures for Import tests: a client on the session's real containerd, archives built once per module."""

from __future__ import annotations

import datetime as dt
import pathlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from imaged.archive import ImportLimits, import_archive
from imaged.containerd import labels as L
from imaged.containerd.client import Containerd
from imaged.containerd.content import ContentStore
from imaged.containerd.images import ImageStore
from imaged.containerd.leases import list_leases
from tests.support.containerd import PrivateContainerd
from tests.support.images import build_test_layout

OWNER = "archive-tests"


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@dataclass
class Importer:
    """import_archive against the session containerd, plus what tests check afterwards."""

    cd: Containerd
    containerd: PrivateContainerd

    async def run(
        self, namespace: str, data: bytes, *, chunk: int = 64 * 1024, limits: ImportLimits | None = None
    ) -> list[str]:
        return await import_archive(
            self.cd.ns(namespace),
            chunked(data, chunk),
            snapshotter="overlayfs",
            owner=OWNER,
            lease_expire=dt.timedelta(minutes=30),
            limits=limits,
        )

    async def records(self, namespace: str) -> dict[str, str]:
        return {i.name: i.target.digest for i in await ImageStore(self.cd.ns(namespace)).list()}

    async def leftovers(self, namespace: str) -> tuple[list[str], list[str]]:
        """Our leases and any active ingest in `namespace` (both must be empty after an import)."""
        ns = self.cd.ns(namespace)
        leases = [le.id for le in await list_leases(ns, f'labels."{L.IMAGED_LEASE}"=={OWNER}')]
        ingests = [s.ref for s in await ContentStore(ns).statuses()]
        return leases, ingests

    def gc(self, namespace: str) -> None:
        """Run containerd's garbage collection now (deleting a lease with --sync does)."""
        lease_id = f"arx-gc-{uuid.uuid4().hex[:8]}"
        self.containerd.ctr("leases", "create", "--id", lease_id, namespace=namespace)
        self.containerd.ctr("leases", "delete", "--sync", lease_id, namespace=namespace)

    def run_container(self, namespace: str, name: str) -> str:
        cid = f"arx-{uuid.uuid4().hex[:10]}"
        r = self.containerd.ctr("run", "--rm", name, cid, namespace=namespace, timeout=60)
        return r.stdout


@pytest.fixture(scope="module")
async def importer(containerd: PrivateContainerd) -> AsyncIterator[Importer]:
    cd = Containerd(containerd.socket)
    yield Importer(cd, containerd)
    await cd.close()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """An OCI layout (umoci) with the runnable busybox image `app` (prints "hello")."""
    yield build_test_layout(tmp_path_factory.mktemp("layout") / "oci", layers=2)
