"""Per-layer progress of a pull containerd makes itself, seen from outside as `ctr` sees one.

containerd's CRI `PullImage` says nothing until it is done, so the layers' states are read from
containerd while it works: an active ingest `layer-<digest>` (`Content.ListStatuses`) is a
download and its offset; a blob present is a finished download; a committed snapshot named by
the layer's chain ID is a finished extraction. A blob or snapshot created before the pull began
was there already (`ALREADY_EXISTS`). Each look is one `ListStatuses` (active ingests only) and
key lookups (`Content.Info`, `Snapshots.Stat`) for at most `WINDOW` layers each, the lowest ones
not done yet: containerd downloads a few layers at a time, roughly in order, and applies them
strictly in order, so the layers above the window have nothing new to tell (an active download
among them still shows, from `ListStatuses`). Asking about every layer at every look cost an
image of 40 small layers 80 calls a look, CPU that the pull itself was waiting for on a small
machine. Not `Content.List` or `Snapshots.List` with filters: containerd walks every blob or
snapshot of the namespace to filter them, and that at the progress rate during every pull (with
2000 of each, 20 ms of containerd's CPU a look). The looks are `interval` apart, and `Progress`
bounds what reaches the client; the last look (`finish`) asks about every layer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.images.walk import host_manifest
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, chain_ids, parse_config
from imaged.pb.containerd.services.content.v1 import content_pb2
from imaged.pb.containerd.services.snapshots.v1 import snapshots_pb2
from imaged.pull.progress import LayerState, Progress, Status

log = logging.getLogger(__name__)

# Layers asked about by key, per kind, in one look (see the module docstring).
WINDOW = 8


def _seconds(ts: object) -> float:
    return float(ts.seconds) + ts.nanos / 1e9  # type: ignore[attr-defined]


class _Layer:
    __slots__ = ("blob_existed", "chain", "desc", "extracted", "extracting_since", "fetched", "stat_asked")

    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        self.chain = ""
        self.fetched = False
        self.extracted = False
        self.extracting_since = 0.0
        self.blob_existed = False
        self.stat_asked = False

    @property
    def lid(self) -> str:
        return self.desc.digest.partition(":")[2][:12]


class IngestWatcher:
    """Turns what containerd holds into `LayerState`s for one pull of `root`."""

    def __init__(
        self, ns: Namespaced, root: Descriptor, snapshotter: str, progress: Progress, *, started: float
    ) -> None:
        self.ns = ns
        self.root = root
        self.snapshotter = snapshotter
        self.progress = progress
        self.started = started  # wall clock, as containerd stamps what it creates
        self.layers: list[_Layer] | None = None
        self._config: Descriptor | None = None

    async def run(self, interval: float) -> None:
        """Look every `interval` seconds until cancelled; a failed look is skipped, not fatal."""
        while True:
            try:
                await self.look()
            except errors.ImagedError as e:
                log.debug("progress of %s: %s", self.root.digest, e.message)
            await asyncio.sleep(interval)

    async def _manifest(self) -> None:
        content = ContentStore(self.ns)
        if self.layers is None:
            try:
                r = self.root
                manifest = (await host_manifest(content, r.media_type, r.digest, r.size)).manifest
            except errors.NotFound:
                return
            self.layers = [_Layer(d) for d in manifest.layers]
            self._config = manifest.config
        if self._config is not None and self.layers and not self.layers[0].chain:
            try:
                config = parse_config(await content.read_all(self._config.digest, mt.MAX_CONFIG_SIZE))
            except errors.NotFound:
                return
            if len(config.diff_ids) == len(self.layers):
                for layer, chain in zip(self.layers, chain_ids(config.diff_ids), strict=True):
                    layer.chain = chain
            self._config = None

    async def look(self, window: int | None = WINDOW) -> None:
        """One look at containerd (about the lowest `window` layers not done; None: all of them);
        reports what changed."""
        await self._manifest()
        if not self.layers:
            return
        pending = [la for la in self.layers if not la.fetched]
        if pending:
            await self._downloads(pending, window)
        # A layer is applied once downloaded; before that only a snapshot made before this pull
        # (asked once per layer) can be there.
        unextracted = [
            la
            for la in [la for la in self.layers if la.chain and not la.extracted][:window]
            if window is None or la.fetched or not la.stat_asked
        ]
        if unextracted:
            await self._extractions(unextracted)

    async def _downloads(self, pending: list[_Layer], window: int | None) -> None:
        ns = self.ns
        statuses = await ns.call(
            ns.content.ListStatuses,
            content_pb2.ListStatusesRequest(filters=[f'ref=="layer-{la.desc.digest}"' for la in pending]),
        )
        active = {st.ref: st for st in statuses.statuses}
        asked = [la for la in pending if f"layer-{la.desc.digest}" not in active][:window]

        content = ContentStore(ns)

        async def blob_created(digest: str) -> float | None:
            info = await content.info(digest)
            return info.created_at if info is not None else None

        found = dict(
            zip(asked, await asyncio.gather(*(blob_created(la.desc.digest) for la in asked)), strict=True)
        )
        for la in pending:
            size = la.desc.size
            if (created := found.get(la)) is not None:
                la.fetched = True
                la.blob_existed = created < self.started
                if la.extracted:
                    # Seen extracted before its blob was asked about (outside the window, or
                    # committed between two calls): its state is final already, not to go back.
                    continue
                status = Status.ALREADY_EXISTS if la.blob_existed else Status.DOWNLOAD_COMPLETE
                self.progress.update(LayerState(la.lid, status, size, size))
            elif la.extracted:
                continue
            elif (st := active.get(f"layer-{la.desc.digest}")) is not None:
                self.progress.update(LayerState(la.lid, Status.DOWNLOADING, st.offset, st.total or size))

    async def _extractions(self, unextracted: list[_Layer]) -> None:
        ns = self.ns

        async def committed_at(chain: str) -> float | None:
            request = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=chain)
            try:
                resp = await ns.call(ns.snapshots.Stat, request)
            except errors.NotFound:
                return None
            # Committed under its chain ID; an active snapshot of that key is not extracted yet.
            return _seconds(resp.info.created_at) if resp.info.kind == snapshots_pb2.COMMITTED else None

        found = await asyncio.gather(*(committed_at(la.chain) for la in unextracted))
        for la in unextracted:
            la.stat_asked = True
        committed = {la.chain: at for la, at in zip(unextracted, found, strict=True) if at is not None}
        now = time.monotonic()
        assert self.layers is not None
        below_done = True  # every layer below this one is extracted
        for la in self.layers:
            size = la.desc.size
            if not la.extracted and la.chain and (created := committed.get(la.chain)) is not None:
                la.extracted = True
                if created < self.started:
                    # Unpacked before: containerd skips the layer, fetched or not.
                    la.fetched = la.blob_existed = True
                    self.progress.update(LayerState(la.lid, Status.ALREADY_EXISTS, size, size))
                else:
                    elapsed = now - la.extracting_since if la.extracting_since else 0.0
                    self.progress.update(LayerState(la.lid, Status.EXTRACT_COMPLETE, size, size, elapsed))
            elif not la.extracted and la.fetched and below_done:
                # containerd applies layers in order: the lowest fetched one not done is being applied.
                if not la.extracting_since:
                    la.extracting_since = now
                self.progress.update(
                    LayerState(la.lid, Status.EXTRACTING, size, size, now - la.extracting_since)
                )
            below_done = below_done and la.extracted

    def downloaded_bytes(self) -> int:
        """Bytes of the layers this pull downloaded (what imaged's own pull counts as pulled)."""
        return sum(la.desc.size for la in self.layers or [] if la.fetched and not la.blob_existed)

    async def finish(self) -> None:
        """The pull is done: every layer's final state (whatever the looks missed)."""
        try:
            await self.look(window=None)
        except errors.ImagedError as e:  # progress is no reason to fail a pull that is done
            log.debug("progress of %s: %s", self.root.digest, e.message)
        for la in self.layers or []:
            if not la.extracted:
                size = la.desc.size
                final = Status.ALREADY_EXISTS if la.blob_existed else Status.EXTRACT_COMPLETE
                self.progress.update(LayerState(la.lid, final, size, size))
