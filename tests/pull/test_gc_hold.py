"""The containerd behaviour the puller relies on instead of leasing each blob (one metadata
transaction per layer saved): a leased manifest's `gc.ref.content` labels keep layers that were
committed outside any lease, through a garbage collection, until the lease goes. Likewise for
snapshots: the unpack holds only the deepest one it found, and its parents stay with it."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from contextlib import AbstractAsyncContextManager, AsyncExitStack

from imaged.containerd.client import Containerd, Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.labels import GC_REF_SNAPSHOT
from imaged.containerd.leases import delete, lease
from imaged.containerd.unpack import Unpacker, UnpackResult
from imaged.oci.manifest import Descriptor, chain_ids
from imaged.pb.containerd.services.leases.v1 import leases_pb2
from imaged.pb.containerd.services.snapshots.v1 import snapshots_pb2
from tests.support import archives as A
from tests.support.containerd import PrivateContainerd

SNAPSHOTTER = "overlayfs"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _write(store: ContentStore, data: bytes, labels: dict[str, str]) -> str:
    d = _digest(data)
    w = await store.open_writer(f"test-{d}", total=len(data), expected=d)
    assert w is not None
    try:
        await w.write(data)
        await w.commit(labels)
    finally:
        await w.close()
    return d


async def _collect(ns: Namespaced) -> None:
    """A synchronous GC: create an empty lease and delete it with sync."""
    created = await ns.call(ns.leases.Create, leases_pb2.CreateRequest(id=f"gc-{os.urandom(4).hex()}"))
    await delete(ns, created.lease.id, sync=True)


def test_leased_manifest_holds_unleased_layers(containerd: PrivateContainerd) -> None:
    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns(f"gchold-{os.getpid()}")
        try:
            layer, orphan = os.urandom(1000), os.urandom(1000)
            async with lease(ns, owner="test", purpose="gc-hold", expire=dt.timedelta(minutes=5)) as lns:
                unleased = ContentStore(lns.with_lease(None))
                manifest = b'{"layer": "%s"}' % _digest(layer).encode()
                await _write(
                    ContentStore(lns), manifest, {"containerd.io/gc.ref.content.l.0": _digest(layer)}
                )
                held = await _write(unleased, layer, {})
                dropped = await _write(unleased, orphan, {})
                await _collect(ns)
                store = ContentStore(ns)
                assert await store.info(held) is not None, "the manifest's gc.ref label must hold the layer"
                assert await store.info(dropped) is None, "unreferenced unleased content must be collected"
            await _collect(ns)
            assert await ContentStore(ns).info(held) is None, "once the lease is gone the layer goes too"
        finally:
            await cd.close()

    asyncio.run(scenario())


class _CollectedAfterLook(Unpacker):
    """The race a failed pull leaves behind: its snapshots are unreferenced, and GC may take the
    deepest one after the search saw it and before the unpack holds it. Simulated by removing it."""

    def __init__(self, ns: Namespaced, snapshotter: str, victim: str) -> None:
        super().__init__(ns, snapshotter)
        self.victim = victim
        self.searches = 0

    async def _deepest_present(self, chains: list[str]) -> int:
        have = await super()._deepest_present(chains)
        self.searches += 1
        if self.searches == 1 and have >= 0 and chains[have] == self.victim:
            await self.ns.call(
                self.ns.snapshots.Remove,
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=self.victim),
            )
        return have


async def _stack(store: ContentStore) -> tuple[list[Descriptor], list[str], str]:
    """Two layers and a config in the content store: (descriptors, diffIDs, config digest)."""
    layers = [A.layer({"etc/one": os.urandom(64)}), A.layer({"etc/two": os.urandom(64)})]
    descs = []
    for la in layers:
        descs.append(Descriptor(la.media_type, await _write(store, la.blob, {}), len(la.blob)))
    # Unique bytes: a blob left unreferenced in another namespace would be found shared.
    config = await _write(store, b'{"rootfs": "%s"}' % os.urandom(8).hex().encode(), {})
    return descs, [la.diff_id for la in layers], config


def _leased(ns: Namespaced, purpose: str) -> AbstractAsyncContextManager[Namespaced]:
    return lease(ns, owner="test", purpose=purpose, expire=dt.timedelta(minutes=5))


def test_unpack_holds_what_it_found_or_looks_again(containerd: PrivateContainerd) -> None:
    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns(f"unpackhold-{os.getpid()}")
        try:
            async with _leased(ns, "blobs") as blobs, AsyncExitStack() as first_lease:
                descs, diff_ids, config = await _stack(ContentStore(blobs))
                chains = chain_ids(diff_ids)
                first = await first_lease.enter_async_context(_leased(ns, "first"))
                assert await Unpacker(first, SNAPSHOTTER).apply_layer(descs[0], diff_ids[0], "", chains[0])
                async with _leased(ns, "pull") as lns:
                    u = _CollectedAfterLook(lns, SNAPSHOTTER, chains[0])
                    result = await u.unpack(config, descs, tuple(diff_ids))
                    # The layer found was gone by the hold: searched again, and both applied.
                    assert (result.applied, result.existed, u.searches) == (2, 0, 2)
                    assert await u.exists(chains[1])
                async with _leased(ns, "pull again") as lns:
                    again = Unpacker(lns, SNAPSHOTTER)
                    result = await again.unpack(config, descs, tuple(diff_ids))
                    assert result == UnpackResult(chains[1], 0, 2)
                    assert await _resources(lns) == [(f"snapshots/{SNAPSHOTTER}", chains[1])], (
                        "only the deepest snapshot is held"
                    )
                    # Now nothing else references them: not the first lease, not the config's label.
                    await first_lease.aclose()
                    await ContentStore(blobs).update_labels(config, {f"{GC_REF_SNAPSHOT}.{SNAPSHOTTER}": ""})
                    await _collect(ns)
                    assert await again.exists(chains[1]), "the held snapshot survives"
                    assert await again.exists(chains[0]), "and keeps its parent"
            await _collect(ns)
            assert not await Unpacker(ns, SNAPSHOTTER).exists(chains[1]), "nothing holds them any more"
        finally:
            await cd.close()

    asyncio.run(scenario())


async def _resources(lns: Namespaced) -> list[tuple[str, str]]:
    resp = await lns.call(lns.leases.ListResources, leases_pb2.ListResourcesRequest(id=lns.lease))
    return sorted((r.type, r.id) for r in resp.resources)


class _CommittedMeanwhile(Unpacker):
    """Another unpack commits the same layer between our Apply and our Commit; with `collect`,
    its snapshot is also removed right before we hold it (GC taking an unreferenced one)."""

    def __init__(self, ns: Namespaced, other: Namespaced, collect: bool) -> None:
        super().__init__(ns, SNAPSHOTTER)
        self.other = other
        self.collect = collect
        self.raced: list[str] = []
        self.race: tuple[Descriptor, str] = (Descriptor("", "", 0), "")

    async def _commit(self, key: str, chain_id: str) -> bool:
        if not self.raced:
            self.raced.append("committed")
            layer, diff_id = self.race
            assert await Unpacker(self.other, SNAPSHOTTER).apply_layer(layer, diff_id, "", chain_id)
        return await super()._commit(key, chain_id)

    async def _held(self, chain_id: str) -> bool:
        if self.collect and self.raced == ["committed"]:
            self.raced.append("collected")
            await self.ns.call(
                self.ns.snapshots.Remove,
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=chain_id),
            )
        return await super()._held(chain_id)


def test_a_commit_beaten_by_another_unpack(containerd: PrivateContainerd) -> None:
    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        try:
            for collect in (False, True):
                ns = cd.ns(f"commitrace-{os.getpid()}-{collect}")
                async with _leased(ns, "blobs") as blobs, _leased(ns, "other") as other:
                    descs, diff_ids, _config = await _stack(ContentStore(blobs))
                    chain = chain_ids(diff_ids)[0]
                    async with _leased(ns, "pull") as lns:
                        u = _CommittedMeanwhile(lns, other, collect)
                        u.race = (descs[0], diff_ids[0])
                        mine = await u.apply_layer(descs[0], diff_ids[0], "", chain)
                        # Found there: the other's counts; gone again: ours is committed after all.
                        assert (u.raced, mine) == (
                            (["committed", "collected"], True) if collect else (["committed"], False)
                        )
                        assert await _resources(lns) == [(f"snapshots/{SNAPSHOTTER}", chain)]
                        snaps = await _snapshots(lns)
                        assert snaps == [chain], f"no active snapshot may be left behind: {snaps}"
        finally:
            await cd.close()

    asyncio.run(scenario())


async def _snapshots(ns: Namespaced) -> list[str]:
    names = []
    async for resp in ns.stream(
        ns.snapshots.List, snapshots_pb2.ListSnapshotsRequest(snapshotter=SNAPSHOTTER)
    ):
        names += [i.name for i in resp.info]
    return sorted(names)
