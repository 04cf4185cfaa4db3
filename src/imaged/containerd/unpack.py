"""Unpacking layers into a snapshotter, one layer as soon as it and its parents are in.

Each layer is applied on top of its parent's chain ID with Diff.Apply; the resulting diffID is
checked against the config, and the config blob finally gets the
`containerd.io/gc.ref.snapshot.<snapshotter>` label, which is what containerd calls "unpacked".

Layer blobs are expected to carry their `containerd.io/uncompressed` label already: writers set it
when they commit a layer (the diffID is in the config), which saves containerd's unpacker's label
update per layer. A layer that does not unpack to its diffID has the label removed again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.leases import finish, hold_if_present
from imaged.oci.manifest import Descriptor, chain_ids
from imaged.pb.containerd.services.diff.v1 import diff_pb2
from imaged.pb.containerd.services.snapshots.v1 import snapshots_pb2
from imaged.pb.containerd.types import descriptor_pb2

# Looks again after finding something gone: each retry means containerd collected it meanwhile.
_SEARCHES = 4

# What happens to a layer: its snapshot is being applied, was applied, or was there already.
UnpackEventKind = Literal["extracting", "extracted", "exists"]
# Called with (layer index, event, elapsed seconds).
UnpackEvent = Callable[[int, UnpackEventKind, float], None]


@dataclass(frozen=True, slots=True)
class UnpackResult:
    top_chain_id: str
    applied: int
    existed: int


class Unpacker:
    def __init__(self, ns: Namespaced, snapshotter: str) -> None:
        self.ns = ns
        self.snapshotter = snapshotter
        self.content = ContentStore(ns)

    async def exists(self, chain_id: str) -> bool:
        try:
            await self.ns.call(
                self.ns.snapshots.Stat,
                snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=chain_id),
            )
        except errors.NotFound:
            return False
        return True

    async def is_unpacked(self, config_digest: str, diff_ids: tuple[str, ...]) -> bool:
        """Whether the config carries our snapshot label and the top snapshot is really there."""
        info = await self.content.info(config_digest)
        if info is None or not diff_ids:
            return False
        top = chain_ids(diff_ids)[-1]
        return info.labels.get(f"{L.GC_REF_SNAPSHOT}.{self.snapshotter}") == top and await self.exists(top)

    async def _deepest_present(self, chains: list[str]) -> int:
        """Index of the last chain whose snapshot exists (-1: none).

        A chain that exists has all its parents, so existence is monotonic along the chain: a
        binary search finds the boundary, and the usual cases (nothing, or everything, unpacked
        yet) cost two Stats and one, instead of a Stat per layer.
        """
        if not chains:
            return -1
        if await self.exists(chains[-1]):
            return len(chains) - 1
        lo, hi = -1, len(chains) - 1  # chains[lo] exists (or lo == -1); chains[hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2 if lo >= 0 else 0
            if await self.exists(chains[mid]):
                lo = mid
            else:
                hi = mid
        return lo

    async def _held(self, chain_id: str) -> bool:
        """Hold a snapshot, then say whether it exists: held, GC cannot take it (nor, since a
        snapshot references its parent, its parents) before the records exist."""
        return await hold_if_present(
            self.ns, chain_id, lambda: self.exists(chain_id), f"snapshots/{self.snapshotter}"
        )

    async def _deepest_held(self, chains: list[str]) -> int:
        """Index of the last chain whose snapshot exists, held in our lease (-1: none).

        The search looks without holding (a hold is a metadata write); only the deepest found is
        held, and looked at again: if it went in between, the search starts over. Each new search
        means something was collected meanwhile, so a few are plenty.
        """
        for _ in range(_SEARCHES):
            have = await self._deepest_present(chains)
            if have < 0 or await self._held(chains[have]):
                return have
        raise errors.Unavailable(
            f"the snapshots of this image kept disappearing while the unpack looked for them "
            f"({_SEARCHES} searches); containerd is collecting them: try again"
        )

    async def apply_layer(self, layer: Descriptor, diff_id: str, parent: str, chain_id: str) -> bool:
        """Apply one layer on `parent` (held or ours); return False if another unpack made it first.

        The caller has seen that the snapshot does not exist.
        """
        key = f"extract-{uuid.uuid4().hex[:12]} {chain_id}"
        try:
            resp = await self.ns.call(
                self.ns.snapshots.Prepare,
                snapshots_pb2.PrepareSnapshotRequest(
                    snapshotter=self.snapshotter, key=key, parent=parent, labels={L.SNAPSHOT_REF: chain_id}
                ),
            )
        except errors.AlreadyExists:
            # Another unpack committed this chain between our Stat and Prepare (the snapshot.ref
            # label names the target): the layer is done, as containerd's own unpacker treats it.
            # containerd leases the target in that same transaction; held again to be sure.
            if not await self._held(chain_id):
                raise errors.Unavailable(
                    f"snapshot {chain_id} was committed by another unpack and removed again; try again"
                ) from None
            return False
        committed = False
        try:
            applied = await self.ns.call(
                self.ns.diff.Apply,
                diff_pb2.ApplyRequest(
                    diff=descriptor_pb2.Descriptor(
                        media_type=layer.media_type, digest=layer.digest, size=layer.size
                    ),
                    mounts=resp.mounts,
                ),
            )
            if applied.applied.digest != diff_id:
                await finish(self.content.update_labels(layer.digest, {L.UNCOMPRESSED: ""}))
                raise errors.DataLoss(
                    f"layer {layer.digest} unpacks to {applied.applied.digest}, "
                    f"but the image config says {diff_id}"
                )
            committed = await self._commit(key, chain_id)
        finally:
            if not committed:
                await finish(self._remove(key))
        return committed

    async def _commit(self, key: str, chain_id: str) -> bool:
        """Commit our applied snapshot as `chain_id`; False if another unpack's commit is there.

        That one may be gone again by the time we hold it (nothing referenced it): then ours, still
        applied, is committed after all, since the name is free and already in our lease.
        """
        for _ in range(_SEARCHES):
            try:
                await self.ns.call(
                    self.ns.snapshots.Commit,
                    snapshots_pb2.CommitSnapshotRequest(
                        snapshotter=self.snapshotter,
                        name=chain_id,
                        key=key,
                        labels={L.SNAPSHOT_REF: chain_id},
                    ),
                )
                return True
            except errors.AlreadyExists:
                if await self._held(chain_id):
                    return False
        raise errors.Unavailable(
            f"snapshot {chain_id} kept being committed by another unpack and removed again; try again"
        )

    async def _remove(self, key: str) -> None:
        try:
            await self.ns.call(
                self.ns.snapshots.Remove,
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
            )
        except errors.NotFound:
            pass

    async def unpack(
        self,
        config_digest: str,
        layers: tuple[Descriptor, ...] | list[Descriptor],
        diff_ids: tuple[str, ...],
        *,
        ready: Callable[[int], Awaitable[None]] | None = None,
        on_event: UnpackEvent | None = None,
    ) -> UnpackResult:
        """Apply `layers` in order; `ready(i)` waits until layer i's blob is in the content store."""
        if len(layers) != len(diff_ids):
            raise errors.InvalidArgument(
                f"image config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
            )
        chains = chain_ids(diff_ids)
        have = await self._deepest_held(chains)
        applied = existed = 0
        for i, (layer, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
            if ready is not None:
                await ready(i)
            start = time.monotonic()
            if i <= have:
                existed += 1
                if on_event:
                    on_event(i, "exists", 0.0)
                continue
            if on_event:
                on_event(i, "extracting", 0.0)
            parent = chains[i - 1] if i else ""
            if await self.apply_layer(layer, diff_id, parent, chains[i]):
                applied += 1
                if on_event:
                    on_event(i, "extracted", time.monotonic() - start)
            else:
                existed += 1
                if on_event:
                    on_event(i, "exists", time.monotonic() - start)
        top = chains[-1] if chains else ""
        if top:
            await self.content.update_labels(config_digest, {f"{L.GC_REF_SNAPSHOT}.{self.snapshotter}": top})
        return UnpackResult(top, applied, existed)
