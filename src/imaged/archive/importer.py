"""ImageService.Import: a streamed image archive into containerd, all or nothing.

Order matters for what a failure leaves behind and for CRI: every blob goes into content under
one lease while the archive streams; then the images are planned from the metadata, synthesized
manifests written, GC labels set and host-platform images unpacked; records are created last,
once everything they point to is complete. Any error before that deletes the lease (so the
content goes with the next GC), aborts the ingest that was open, and records nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from imaged.archive.ingest import ArchiveContents, Ingest
from imaged.archive.limits import ImportLimits
from imaged.archive.names import record_name
from imaged.archive.plan import Plan, Planner, UnpackPlan
from imaged.archive.signatures import ArchiveMaterial, ArchiveSignatures
from imaged.archive.stream import PIECE, ByteReader, decompressed
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.images import Target
from imaged.containerd.leases import lease
from imaged.containerd.unpack import Unpacker, UnpackEventKind
from imaged.errors import AlreadyExists, DataLoss, Internal, InvalidArgument
from imaged.images.records import create_records, undo_records
from imaged.oci.manifest import Platform
from imaged.oci.platform import host_platform
from imaged.registry.reference import Reference
from imaged.tasks import gather

log = logging.getLogger(__name__)

# The verification policy for the names an archive would create: given each (name, digest) and a
# way to read what the archive carries for a digest (signatures, attestations), the labels each
# name's records get (missing: none); raises to refuse the whole import.
SignatureSource = Callable[[str], Awaitable[ArchiveMaterial]]
ImportPolicy = Callable[
    [list[tuple[Reference, str]], SignatureSource], Awaitable[dict[tuple[Reference, str], dict[str, str]]]
]


def _names(plan: Plan) -> list[str]:
    """Names in archive order; one name given to two different images is refused."""
    owner: dict[str, str] = {}
    names: list[str] = []
    for image in plan.images:
        for ref in image.names:
            if ref.digest and ref.digest != image.target.digest:
                raise InvalidArgument(
                    f"{image.what} is named {ref}, but the image's digest is {image.target.digest}"
                )
            name = record_name(ref, image.target.digest)
            if name in owner:
                if owner[name] != image.target.digest:
                    raise InvalidArgument(
                        f"the archive gives the name {name} to two different images "
                        f"({owner[name]} and {image.target.digest})"
                    )
                continue
            owner[name] = image.target.digest
            names.append(name)
    return names


# How containerd (Diff.Apply, reported as UNKNOWN) describes a layer whose bytes are no (compressed) tar.
_UNPACK_ATTEMPTS = 4
_LAYER_FAULTS = ("archive/tar:", "unexpected EOF", "gzip:", "flate:", "zstd:", "magic number mismatch")


def _unpack_plans(plan: Plan) -> list[tuple[str, UnpackPlan]]:
    """What to unpack, once per config (two names of one image unpack once)."""
    seen: set[str] = set()
    out = []
    for image in plan.images:
        u = image.unpack
        if u is not None and u.config_digest not in seen:
            seen.add(u.config_digest)
            out.append((image.what, u))
    return out


def _unpack_order(unpacks: list[tuple[str, UnpackPlan]]) -> list[str]:
    """Digests in the order the unpacking needs them: every config, then the layers."""
    order = [u.config_digest for _, u in unpacks]
    order += [layer.digest for _, u in unpacks for layer in u.layers]
    return list(dict.fromkeys(order))


async def _unpack(
    unpacker: Unpacker,
    what: str,
    u: UnpackPlan,
    ready: Callable[[str], Awaitable[None]],
) -> None:
    """Unpack; the layers are the archive's, so one that cannot be applied is bad input, not our fault.

    `ready(digest)` waits until that blob (the config, a layer) is written and labelled.
    """
    await ready(u.config_digest)
    current = -1

    async def layer_ready(i: int) -> None:
        await ready(u.layers[i].digest)

    def on_event(i: int, event: UnpackEventKind, _elapsed: float) -> None:
        nonlocal current
        if event == "extracting":
            current = i

    try:
        for attempt in range(_UNPACK_ATTEMPTS):
            try:
                await unpacker.unpack(
                    u.config_digest,
                    u.layers,
                    u.diff_ids,
                    ready=layer_ready,
                    on_event=on_event,
                )
                break
            except AlreadyExists:
                # Another client committed the same snapshot between our Stat and Prepare (containerd
                # answers "target snapshot ... already exists"); again, the layer is found and skipped.
                if attempt == _UNPACK_ATTEMPTS - 1:
                    raise
    except (DataLoss, InvalidArgument) as e:  # a layer that does not unpack to its diff_id, ...
        raise InvalidArgument(f"{what}: {e.message}") from e
    except Internal as e:
        if current < 0 or not any(fault in e.message for fault in _LAYER_FAULTS):
            raise
        layer = u.layers[current]
        raise InvalidArgument(
            f"{what}: layer {current} ({layer.digest}) cannot be unpacked: {e.message}"
        ) from e


# The writes only need to stay ahead of the unpacking, which is the critical path; more of them
# at once slow it down through containerd's contention (4 against 8: 5-9% faster imports of 40
# small layers, in three A/B comparisons of both formats).
WRITE_CONCURRENCY = 4


async def import_archive(
    ns: Namespaced,
    chunks: AsyncIterator[bytes],
    *,
    snapshotter: str,
    owner: str,
    lease_expire: dt.timedelta = dt.timedelta(hours=1),
    platform: Platform | None = None,
    limits: ImportLimits | None = None,
    policy: ImportPolicy | None = None,
) -> list[str]:
    """Import the archive streamed as `chunks` into namespace `ns`; return the image names, first = response.

    `chunks` is the raw archive (plain, gzip or zstd tar) in pieces of any size. `owner` labels the
    lease (so a restarted daemon can remove a leaked one); `platform` (default: the host's) decides
    what is unpacked into `snapshotter`. Raises InvalidArgument for anything wrong with the archive.
    `policy` decides every name before anything is unpacked or recorded (the daemon's verification
    rules; a refusal leaves nothing behind, as any failure here does).
    """
    platform = platform or host_platform()
    limits = limits or ImportLimits()
    async with lease(ns, owner=owner, purpose="import", expire=lease_expire) as leased:
        ingest = Ingest(leased, limits)
        tar_stream = decompressed(
            chunks,
            max_zstd_window=limits.max_zstd_window,
            max_expansion=limits.max_expansion,
            expansion_floor=limits.expansion_floor,
        )
        async with aclosing(tar_stream) as tar_bytes:
            reader = ByteReader(tar_bytes)
            contents = await ingest.run(reader)
            await _trailer(reader)
        plan = await Planner(contents, ingest.store, platform, limits).plan()
        if not plan.images:
            raise InvalidArgument("no images imported from archive")
        names = _names(plan)
        decided: dict[tuple[Reference, str], dict[str, str]] = {}
        if policy is not None:
            digests = {image.target.digest for image in plan.images}
            carried = ArchiveSignatures(contents, ingest.store, limits, digests)
            pairs = [(ref, image.target.digest) for image in plan.images for ref in image.names]
            decided = await policy(pairs, carried.of)
        unpacked = await _write_and_unpack(ingest, contents, plan, Unpacker(leased, snapshotter))

        created: list[str] = []
        try:
            for image in plan.images:
                target = Target(image.target.media_type, image.target.digest, image.target.size)
                for ref in image.names:
                    labels = decided.get((ref, image.target.digest))
                    await create_records(ns, ref, target, image.config_digest, labels, created=created)
        except BaseException:
            # All or nothing: the images recorded before the failure go too.
            await undo_records(ns, created)
            raise
        log.info(
            "imported %s archive into %s: %d members, %d images (%d unpacked): %s",
            plan.format,
            ns.namespace,
            contents.members,
            len(plan.images),
            unpacked,
            ", ".join(names),
        )
        return names


async def _trailer(reader: ByteReader) -> None:
    """Read on past the end-of-archive blocks (tar's padding, then a gzip or zstd trailer), up to
    1 MiB, so a compressed archive's checksum is checked and its truncation seen."""
    left = 1 << 20
    while left > 0 and (piece := await reader.read_some(min(left, PIECE))):
        left -= len(piece)


async def _write_and_unpack(ingest: Ingest, contents: ArchiveContents, plan: Plan, unpacker: Unpacker) -> int:
    """Write what the archive held in memory, set the planned labels, and unpack meanwhile; return
    how many images were unpacked.

    The writes are independent and small, a few containerd round trips each, so they run side by
    side. Configs and layers go first, in unpack order, and a layer is applied as soon as its own
    write or label update is done. The diffIDs are known now, so layers get their uncompressed
    label with the labels they are written or updated with, not in one update each after unpacking.
    """
    unpacks = _unpack_plans(plan)
    for _, u in unpacks:
        for layer, diff_id in zip(u.layers, u.diff_ids, strict=True):
            plan.labels.setdefault(layer.digest, {})[L.UNCOMPRESSED] = diff_id
    rank = {d: i for i, d in enumerate(_unpack_order(unpacks))}
    ops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    written: set[str] = set()
    for digest in sorted(plan.needed):
        held = contents.by_digest[digest].data
        if held is not None:
            ops.append(
                (digest, functools.partial(ingest.write_blob, held, digest, plan.labels.get(digest, {})))
            )
            written.add(digest)
    ops += [
        (b.digest, functools.partial(ingest.write_blob, b.data, b.digest, b.labels))
        for b in plan.new_blobs.values()
    ]
    ops += [
        (digest, functools.partial(ingest.store.update_labels, digest, labels))
        for digest, labels in plan.labels.items()
        if digest not in written
    ]
    ops.sort(key=lambda op: (rank.get(op[0], len(rank)), op[0]))
    settled = {digest: asyncio.Event() for digest, _ in ops}

    async def run(digest: str, start: Callable[[], Awaitable[None]]) -> None:
        await start()
        settled[digest].set()

    async def ready(digest: str) -> None:
        if digest in settled:
            await settled[digest].wait()

    async def unpack_all() -> None:
        for what, u in unpacks:
            await _unpack(unpacker, what, u, ready)

    writes = [functools.partial(run, d, start) for d, start in ops]
    steps: list[Callable[[], Awaitable[object]]] = [
        functools.partial(gather, writes, limit=WRITE_CONCURRENCY)
    ]
    await gather([*steps, unpack_all])
    return len(unpacks)
