"""The pull pipeline: resolve, fetch into content under a lease, unpack while downloading, record.

Blobs are written with containerd's own ingest refs (`layer-sha256:...`), so a concurrent pull of
the same blob by anyone waits on the same ingest instead of downloading it twice, and a pull
cut short leaves its partial ingest to be resumed with `Range` by the next one.

Those ingests are opened outside the pull's lease: containerd aborts a leased ingest as soon as
its lease is gone (at the next garbage collection, within a second), while an unleased one lives
for 24 hours. What is committed, or found already present, is held all the same: the manifest is
in the lease before any layer is fetched, and its `gc.ref.content` labels name the config and
every layer, so containerd's GC keeps them through it. That costs no metadata transaction per
blob; layers are also committed with their `containerd.io/uncompressed` label (the diffID from the
config), which saves the label update after unpacking. containerd serializes every metadata
write and syncs it to disk, so those transactions, not bytes, bound a pull of many small layers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.content import BlobKind, ContentStore, ingest_ref, write_blob
from imaged.containerd.gclabels import distribution_source, index_child_key, manifest_labels
from imaged.containerd.images import ImageStore, Target
from imaged.containerd.leases import hold_if_present, lease
from imaged.containerd.unpack import Unpacker, UnpackEventKind
from imaged.images.records import create_records
from imaged.images.walk import unpacked_record
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import (
    Descriptor,
    ImageConfig,
    Manifest,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
)
from imaged.oci.platform import host_platform, select
from imaged.pull.progress import LayerState, Progress, Status
from imaged.pull.turns import Turns
from imaged.registry.client import RegistryClient
from imaged.registry.reference import Reference, parse
from imaged.tasks import gather

log = logging.getLogger(__name__)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VerifiedPin:
    """What verification decided for a pull: the digest to pin to (None: a tag allowed in warn mode
    that was not resolved, by a deny rule), the label to record, and the fingerprint of the rule it
    was made under (empty for a warned verdict). Also a verdict read back from a record."""

    digest: str | None
    message: str
    rule: str = ""


# The policy for a pull, given what is recorded for a pinned digest (a VerifiedPin read from its
# record's labels, or None). Returns None when no verification applies (or it was skipped);
# raises to refuse the pull.
VerifyHook = Callable[[Reference, VerifiedPin | None], Awaitable[VerifiedPin | None]]


class Transfer(Protocol):
    """Another way to move a pinned image into containerd, used where it `applies` (containerd's
    CRI plugin for k8s.io: cri/transfer.py). Same contract as `Puller._pull`, except that its
    failures say themselves that pulling `ref` failed (`error pulling image <ref>: ...`)."""

    async def applies(self, ns: Namespaced, ref: Reference) -> bool: ...

    async def pull(
        self,
        ns: Namespaced,
        ref: Reference,
        progress: Progress,
        labels: dict[str, str],
        root: Descriptor | None,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class PullOptions:
    owner: str
    snapshotter: str = "overlayfs"
    max_concurrent_downloads: int = 4
    lease_expire: dt.timedelta = dt.timedelta(hours=24)


def layer_id(digest: str) -> str:
    return digest.partition(":")[2][:12]


@dataclass(slots=True)
class _Resolved:
    root: Descriptor
    manifest_desc: Descriptor
    manifest: Manifest


class Puller:
    def __init__(
        self,
        registry: RegistryClient,
        options: PullOptions,
        verify: VerifyHook | None = None,
        on_bytes: Callable[[int], None] | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.verify = verify
        self.on_bytes = on_bytes  # bytes of blobs downloaded (the daemon's metric)
        self.transfer = transfer

    async def pull(self, ns: Namespaced, image_ref: str, progress: Progress) -> str:
        """Pull `image_ref` into `ns`; return the digest-pinned name.

        Every pull is decided by the current policy first, a digest already recorded here too
        (the reference returned those at once, so deny rules, `noMatch: deny` and verify rules
        never saw them); a verify rule may accept the verdict recorded on the image only if it
        was made under the same rule and trust material. Then a digest recorded and unpacked
        returns without downloading. A tag is asked of the registry again (through the
        verification when a rule applies), as `docker pull` and CRI do, since it may have moved:
        the reference returned the image recorded under it, so a re-pushed `app:v1` never
        arrived. If the tag still names what is recorded, nothing is downloaded. If the registry
        cannot be reached and no rule wants a signature, the image recorded under the tag is used,
        so that a node without network keeps what it has.
        """
        ref = parse(image_ref)
        # What the new records say comes from this decision only, never from another record.
        labels: dict[str, str] = {L.VERIFIED: "", L.VERIFIED_RULE: ""}
        root: Descriptor | None = None
        recorded = await self._recorded_verdict(ns, ref) if ref.digest and self.verify else None
        pin = await self.verify(ref, recorded) if self.verify is not None else None
        if pin is not None:
            labels[L.VERIFIED] = pin.message
        if pin is not None and pin.digest is not None:
            # Under a rule that wants a signature there is no falling back: an unreachable
            # registry fails the pull, whatever is recorded (its signer may no longer be trusted).
            labels[L.VERIFIED_RULE] = pin.rule
            pinned = ref.with_digest(pin.digest)
        elif ref.digest:
            pinned = ref
        else:
            tagged = ref.tagged()
            recorded_tag = await ImageStore(ns).get(tagged) if tagged else None
            try:
                # With a recorded image to fall back on, one try per request.
                attempts = 1 if recorded_tag is not None else None
                root = await self._wrap(ref, self.registry.resolve(ref, attempts=attempts))
            except errors.Unavailable as e:
                present = await self._present(ns, ref, labels) if recorded_tag is not None else None
                if present is None:
                    raise
                log.warning(
                    "%s: using the image recorded here, the registry is not reachable (%s)", ref, e.message
                )
                return present
            pinned = ref.with_digest(root.digest)
        present = await self._present(ns, pinned, labels)
        if present is not None:
            return present
        if self.transfer is not None and await self.transfer.applies(ns, pinned):
            return await self.transfer.pull(ns, pinned, progress, labels, root)
        # Failures name what was asked for, or the digest a verification pinned it to.
        return await self._wrap(
            pinned if pin and pin.digest else ref, self._pull(ns, pinned, progress, labels, root)
        )

    @staticmethod
    async def _recorded_verdict(ns: Namespaced, ref: Reference) -> VerifiedPin | None:
        """The verdict recorded on `repo@digest`, if that record exists and carries one."""
        image = await ImageStore(ns).get(ref.pinned())
        if image is None or image.target.digest != ref.digest:
            return None
        message, rule = image.labels.get(L.VERIFIED, ""), image.labels.get(L.VERIFIED_RULE, "")
        return VerifiedPin(image.target.digest, message, rule) if message and rule else None

    @staticmethod
    async def _wrap(ref: Reference, work: Awaitable[T]) -> T:
        """`work`'s result; its failures say that pulling `ref` failed (the reference's wording)."""
        try:
            return await work
        except errors.ImagedError as e:
            raise errors.in_context(e, f"error pulling image {ref}") from e

    async def _present(self, ns: Namespaced, ref: Reference, labels: dict[str, str]) -> str | None:
        """The pinned name if the image is recorded and unpacked already; its records are
        refreshed with `labels` (the labels of this pull's decision: other labels a record has are
        left as they are, and none is copied from one record to another)."""
        name = ref.pinned() if ref.digest else ref.tagged()
        if name is None:
            return None
        found = await unpacked_record(ns, name, ref.digest, self.options.snapshotter)
        if found is None:
            return None
        image, config_digest = found
        await create_records(ns, ref, image.target, config_digest, labels)
        return ref.pinned(image.target.digest)

    async def _pull(
        self,
        ns: Namespaced,
        ref: Reference,
        progress: Progress,
        labels: dict[str, str],
        root: Descriptor | None = None,
    ) -> str:
        if root is None:
            root = await self.registry.resolve(ref)
        if ref.digest and root.digest != ref.digest:
            raise errors.DataLoss(f"registry answered {root.digest} for {ref}")
        pinned = ref.with_digest(root.digest)
        source = distribution_source(ref.domain, ref.path)
        async with lease(
            ns, owner=self.options.owner, purpose="pull", expire=self.options.lease_expire
        ) as lns:
            content = ContentStore(lns)
            resolved = await self._walk(content, pinned, root, source)
            config_desc = resolved.manifest.config
            if config_desc.size > mt.MAX_CONFIG_SIZE:  # refused before a byte of it is downloaded
                raise errors.InvalidArgument(
                    f"{ref}: image config {config_desc.digest} is {config_desc.size} bytes, "
                    f"over the {mt.MAX_CONFIG_SIZE} byte limit"
                )
            await self._fetch_blob(lns, pinned, config_desc, "config", source)
            config = parse_config(await content.read_all(config_desc.digest, mt.MAX_CONFIG_SIZE))
            await self._layers(lns, pinned, resolved.manifest, config, progress, source)
            target = Target(root.media_type, root.digest, root.size)
            await create_records(lns, ref, target, config_desc.digest, labels)
        await self._drop_stale_ingests(ContentStore(ns), [config_desc, *resolved.manifest.layers])
        return ref.pinned(root.digest)

    async def _drop_stale_ingests(self, content: ContentStore, blobs: list[Descriptor]) -> None:
        """Ingests of this image's blobs left by an earlier, cut-short pull (a writer opened just
        before the cancel): the blobs are committed now, so those ingests are garbage."""
        kinds: tuple[BlobKind, ...] = ("layer", "config")
        refs = {ingest_ref(kind, d.digest) for d in blobs for kind in kinds}
        try:
            stale = [st.ref for st in await content.statuses() if st.ref in refs]
            for r in stale:
                await content.abort(r)
        except errors.ImagedError as e:
            log.debug("could not drop stale ingests: %s", e)

    async def _write_bytes(
        self, content: ContentStore, kind: BlobKind, desc: Descriptor, data: bytes, labels: dict[str, str]
    ) -> None:
        # Committed by another pull meanwhile, it is held already (_manifest_bytes).
        await write_blob(
            content, ingest_ref(kind, desc.digest), data, size=len(data), digest=desc.digest, labels=labels
        )

    async def _manifest_bytes(self, content: ContentStore, ref: Reference, desc: Descriptor) -> bytes:
        # Held before looking: content nothing references (a cancelled pull's) may otherwise be
        # collected between the look and the read.
        if await hold_if_present(content.ns, desc.digest, lambda: content.exists(desc.digest)):
            try:
                return await content.read_all(desc.digest, mt.MAX_MANIFEST_SIZE)
            except errors.NotFound:
                pass
        return (await self.registry.get_manifest(ref, desc.digest)).body

    async def _walk(
        self, content: ContentStore, ref: Reference, desc: Descriptor, source: dict[str, str], depth: int = 0
    ) -> _Resolved:
        data = await self._manifest_bytes(content, ref, desc)
        if desc.media_type in mt.SCHEMA1:
            raise errors.InvalidArgument(f"{ref} is a Docker schema 1 image, which is not supported")
        media_type = media_type_of(data, desc.media_type)
        if media_type in mt.SCHEMA1:
            raise errors.InvalidArgument(f"{ref} is a Docker schema 1 image, which is not supported")
        if mt.is_index(media_type):
            if depth >= mt.MAX_INDEX_DEPTH:
                raise errors.InvalidArgument(f"{ref}: index nesting deeper than {mt.MAX_INDEX_DEPTH}")
            index = parse_index(data, f"index {desc.digest}")
            candidates = select(index.manifests)
            if not candidates:
                found = ", ".join(sorted({str(d.platform) for d in index.manifests if d.platform})) or "none"
                raise errors.NotFound(f"{ref} has no image for {host_platform()} (platforms: {found})")
            chosen = candidates[0]
            labels = {index_child_key(index.manifests.index(chosen)): chosen.digest, **source}
            await self._write_bytes(content, "index", desc, data, labels)
            resolved = await self._walk(content, ref, chosen, source, depth + 1)
            return _Resolved(desc, resolved.manifest_desc, resolved.manifest)
        manifest = parse_manifest(data, f"manifest {desc.digest}")
        await self._write_bytes(content, "manifest", desc, data, {**manifest_labels(manifest), **source})
        return _Resolved(desc, desc, manifest)

    async def _fetch_blob(
        self,
        lns: Namespaced,
        ref: Reference,
        desc: Descriptor,
        kind: BlobKind,
        labels: dict[str, str],
        on_progress: Callable[[Status, int], None] | None = None,
        turns: tuple[Turns, int] | None = None,
    ) -> bool:
        """Stream a blob into the content store; return False if it was there before we looked.

        The ingest is unleased; the blob is held through the leased manifest (module docstring).
        `turns`: the gate and this blob's place in it, when blobs take turns writing (turns.py).
        """
        waited = False

        def lock_wait() -> None:
            nonlocal waited
            waited = True

        async def fetch(offset: int) -> AsyncIterator[bytes]:
            async for chunk in self.registry.fetch_blob(ref, desc, offset=offset):
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
                yield chunk

        written = await write_blob(
            ContentStore(lns.with_lease(None)),
            ingest_ref(kind, desc.digest),
            fetch,
            size=desc.size,
            digest=desc.digest,
            labels=labels,
            lock_wait=lock_wait,
            on_write=(lambda offset: on_progress(Status.DOWNLOADING, offset)) if on_progress else None,
            turn=(lambda: turns[0].turn(turns[1])) if turns is not None else None,
        )
        return written != "present" or waited

    async def _layers(
        self,
        lns: Namespaced,
        ref: Reference,
        manifest: Manifest,
        config: ImageConfig,
        progress: Progress,
        source: dict[str, str],
    ) -> None:
        layers = manifest.layers
        if len(layers) != len(config.diff_ids):
            raise errors.InvalidArgument(
                f"{ref}: manifest has {len(layers)} layers "
                f"but the config lists {len(config.diff_ids)} diff_ids"
            )
        done = [asyncio.Event() for _ in layers]
        downloaded = [False] * len(layers)
        sem = asyncio.Semaphore(self.options.max_concurrent_downloads)
        # One layer writes at a time, the earliest first, so layers complete in unpacking order.
        turns = Turns(1)

        async def download(i: int, desc: Descriptor) -> None:
            lid = layer_id(desc.digest)

            def report(status: Status, offset: int) -> None:
                progress.update(LayerState(lid, status, offset, desc.size))

            labels = {**source, L.UNCOMPRESSED: config.diff_ids[i]}
            async with sem:
                downloaded[i] = await self._fetch_blob(lns, ref, desc, "layer", labels, report, (turns, i))
            report(Status.DOWNLOAD_COMPLETE if downloaded[i] else Status.ALREADY_EXISTS, desc.size)
            done[i].set()

        tickers: dict[int, asyncio.Task[None]] = {}

        async def tick(i: int, start: float) -> None:
            desc = layers[i]
            while True:
                await asyncio.sleep(0.5)
                progress.update(
                    LayerState(
                        layer_id(desc.digest),
                        Status.EXTRACTING,
                        desc.size,
                        desc.size,
                        time.monotonic() - start,
                    )
                )

        def on_event(i: int, event: UnpackEventKind, elapsed: float) -> None:
            desc = layers[i]
            lid = layer_id(desc.digest)
            if event == "extracting":
                progress.update(LayerState(lid, Status.EXTRACTING, desc.size, desc.size, 0.0))
                tickers[i] = asyncio.create_task(tick(i, time.monotonic()))
                return
            t = tickers.pop(i, None)
            if t is not None:
                t.cancel()
            if event == "extracted" or downloaded[i]:
                progress.update(LayerState(lid, Status.EXTRACT_COMPLETE, desc.size, desc.size, elapsed))
            else:
                progress.update(LayerState(lid, Status.ALREADY_EXISTS, desc.size, desc.size, elapsed))

        async def wait_ready(i: int) -> None:
            await done[i].wait()

        unpacker = Unpacker(lns, self.options.snapshotter)
        steps: list[Callable[[], Awaitable[object]]] = [
            functools.partial(download, i, desc) for i, desc in enumerate(layers)
        ]
        steps.append(
            functools.partial(
                unpacker.unpack,
                manifest.config.digest,
                layers,
                config.diff_ids,
                ready=wait_ready,
                on_event=on_event,
            )
        )
        try:
            await gather(steps)
        finally:
            for t in tickers.values():
                t.cancel()
