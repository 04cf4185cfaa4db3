"""A blob that a commit finds already present is not leased by containerd, and one nothing
references may be collected at any time. A blob the import holds in memory is held after its
commit and written again if it went; a streamed one is held before its commit, so it either
stays or is created from the import's own bytes.

The race is made on the real containerd: another, unleased writer commits the blob between the
import's writer opening and its commit; "collected" tests also delete it just before the hold."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable

import pytest

from imaged.archive import ImportLimits
from imaged.archive.ingest import Ingest
from imaged.archive.stream import ByteReader
from imaged.containerd import leases as leases_mod
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore, Writer
from imaged.containerd.leases import delete, lease
from imaged.pb.containerd.services.leases.v1 import leases_pb2
from tests.archive import builders as B
from tests.archive.builders import M
from tests.archive.conftest import Importer, chunked


class _Raced(Ingest):
    """Commits `race_data` through a second, unleased writer right after the first writer opens."""

    race_data = b""

    async def _open(self, ref: str, total: int, expected: str) -> Writer | None:
        writer = await super()._open(ref, total, expected)
        blob, self.race_data = self.race_data, b""
        if blob:
            other = await ContentStore(self.ns.with_lease(None)).open_writer(
                f"other-{uuid.uuid4().hex}", total=len(blob), expected=_sha(blob)
            )
            assert other is not None and other.offset == 0
            await other.write(blob)
            await other.commit()
            await other.close()
        return writer


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _collect_before_hold(monkeypatch: pytest.MonkeyPatch, digest: str) -> list[str]:
    """Replace `hold` by one that deletes the blob first, once (what GC would do)."""
    real = leases_mod.hold
    collected: list[str] = []

    async def hold(ns: Namespaced, resource_id: str, kind: str = "content") -> None:
        if resource_id == digest and not collected:
            await ContentStore(ns.with_lease(None)).delete(digest)
            collected.append(digest)
        await real(ns, resource_id, kind)

    monkeypatch.setattr(leases_mod, "hold", hold)  # what content.copy and hold_if_present call
    return collected


async def _gc(ns: Namespaced) -> None:
    created = await ns.call(ns.leases.Create, leases_pb2.CreateRequest(id=f"gc-{os.urandom(4).hex()}"))
    await delete(ns, created.lease.id, sync=True)


async def _in_lease(importer: Importer, body: Callable[[Namespaced], Awaitable[None]]) -> Namespaced:
    ns = importer.cd.ns(f"ingesthold-{uuid.uuid4().hex[:8]}")
    async with lease(ns, owner="test", purpose="ingest", expire=dt.timedelta(minutes=5)) as lns:
        await body(lns)
    return ns


async def test_a_blob_held_in_memory_is_written_again(
    importer: Importer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3000)
    digest = _sha(data)
    collected = _collect_before_hold(monkeypatch, digest)

    async def body(lns: Namespaced) -> None:
        ing = _Raced(lns, ImportLimits())
        ing.race_data = data
        await ing.write_blob(data, digest, {"test": "label"})
        assert collected == [digest], "the race did not happen: the test proves nothing"
        await _gc(lns)  # what the lease holds survives a collection
        info = await ContentStore(lns).info(digest)
        assert info is not None and info.labels.get("test") == "label"

    ns = await _in_lease(importer, body)
    await _gc(ns)
    assert await ContentStore(ns).info(digest) is None, "once the lease is gone, so is the blob"


async def test_a_blob_held_in_memory_found_present_is_held_and_labelled(importer: Importer) -> None:
    # No collection: the other writer's blob is unreferenced, so only our hold keeps it.
    data = os.urandom(3000)
    digest = _sha(data)

    async def body(lns: Namespaced) -> None:
        ing = _Raced(lns, ImportLimits())
        ing.race_data = data
        await ing.write_blob(data, digest, {"test": "label"})
        assert ing.race_data == b"", "the race did not happen: the test proves nothing"
        await _gc(lns)
        info = await ContentStore(lns).info(digest)
        assert info is not None, "a blob the commit found present must be held"
        assert info.labels.get("test") == "label", "the commit set no labels on it: they must be set"

    ns = await _in_lease(importer, body)
    await _gc(ns)
    assert await ContentStore(ns).info(digest) is None


def _blob_archive(data: bytes) -> bytes:
    return B.tar([M(B.blob_name(_sha(data)), data)])


async def test_a_streamed_blob_found_present_is_held(importer: Importer) -> None:
    data = os.urandom(3000)
    digest = _sha(data)

    async def body(lns: Namespaced) -> None:
        # Nothing is buffered in memory: every member streams into containerd.
        ing = _Raced(lns, ImportLimits(max_buffered_member=0))
        ing.race_data = data
        contents = await ing.run(ByteReader(chunked(_blob_archive(data), 1024)))
        assert ing.race_data == b"", "the race did not happen: the test proves nothing"
        assert digest in contents.by_digest
        await _gc(lns)
        assert await ContentStore(lns).read_all(digest, 10_000) == data

    ns = await _in_lease(importer, body)
    assert [s.ref for s in await ContentStore(ns).statuses()] == []


async def test_a_streamed_blob_collected_before_the_commit_is_made_from_the_import(
    importer: Importer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3000)
    digest = _sha(data)
    collected = _collect_before_hold(monkeypatch, digest)

    async def body(lns: Namespaced) -> None:
        ing = _Raced(lns, ImportLimits(max_buffered_member=0))
        ing.race_data = data
        await ing.run(ByteReader(chunked(_blob_archive(data), 1024)))
        assert collected == [digest], "the race did not happen: the test proves nothing"
        await _gc(lns)
        assert await ContentStore(lns).read_all(digest, 10_000) == data

    ns = await _in_lease(importer, body)
    assert [s.ref for s in await ContentStore(ns).statuses()] == []
    await _gc(ns)
    assert await ContentStore(ns).info(digest) is None
