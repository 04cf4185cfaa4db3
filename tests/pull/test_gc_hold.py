"""The containerd behaviour the puller relies on instead of leasing each blob (one metadata
transaction per layer saved): a leased manifest's `gc.ref.content` labels keep layers that were
committed outside any lease, through a garbage collection, until the lease goes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os

from imaged.containerd.client import Containerd, Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.leases import delete, lease
from imaged.pb.containerd.services.leases.v1 import leases_pb2
from tests.support.containerd import PrivateContainerd


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
