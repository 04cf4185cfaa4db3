"""Reading the archive once: blobs go into containerd's content store as they pass, metadata is kept.

Member order is arbitrary (index.json or manifest.json may come first or last), so every member
that can be a blob is stored while it streams by and recorded by path; what is an image is decided
afterwards from the metadata. A member under `blobs/<alg>/<hex>` must hash to its name; other
members (docker-save's `<id>/layer.tar`, `<hex>.json`) are stored with the digest computed on the way.
Everything is written under the caller's lease, so what no image ends up referencing goes with it.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from imaged import errors
from imaged.archive.limits import ImportLimits
from imaged.archive.stream import ByteReader
from imaged.archive.tar import BLOCK, Kind, Member, TarReader, checksum_ok
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore, Writer, copy
from imaged.containerd.leases import finish
from imaged.errors import InvalidArgument
from imaged.oci.digest import validate_digest

OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
MANIFEST_JSON = "manifest.json"
DOCUMENTS = (OCI_LAYOUT, INDEX_JSON, MANIFEST_JSON)

_BLOB_PATH = re.compile(r"^blobs/([^/]+)/([^/]+)$")
# Writes of one in-memory blob before giving up: each retry means containerd collected it meanwhile.
_REWRITES = 3


@dataclass(frozen=True, slots=True)
class Blob:
    """A member in the content store, or (small ones) held in memory until an image needs it."""

    path: str
    digest: str
    size: int
    # From the first bytes: "gzip", "zstd", "tar", or "" when it is none of them.
    compression: str
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Entry:
    """A member that is not stored content: a link, device, FIFO, sparse or unknown-type member."""

    path: str
    kind: Kind
    linkname: str = ""


@dataclass
class ArchiveContents:
    blobs: dict[str, Blob] = field(default_factory=dict)  # by member path
    by_digest: dict[str, Blob] = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)  # by member path
    documents: dict[str, bytes] = field(default_factory=dict)  # oci-layout, index.json, manifest.json
    members: int = 0


def clean_path(name: str, what: str = "member") -> str:
    """A member path without `./` and duplicate slashes; absolute and `..` paths are refused."""
    if name.startswith("/"):
        raise InvalidArgument(f"archive {what} {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"archive {what} {name!r} has a '..' path component")
    return "/".join(parts)


def blob_digest(path: str) -> str | None:
    """The digest a `blobs/<alg>/<encoded>` path names, None for other paths."""
    if not path.startswith("blobs/"):
        return None
    m = _BLOB_PATH.match(path)
    if m is None:
        raise InvalidArgument(
            f"archive member {path!r} is under blobs/ but is not named blobs/<algorithm>/<digest>"
        )
    digest = f"{m.group(1)}:{m.group(2)}"
    try:
        return validate_digest(digest)
    except InvalidArgument as e:
        raise InvalidArgument(f"archive member {path!r} is not named by a valid digest: {e.message}") from e


def sniff(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if len(head) >= 512 and (head[:512] == b"\0" * 512 or checksum_ok(head[:512])):
        return "tar"
    return ""


def _skippable(path: str) -> bool:
    """docker-save members no importer reads: legacy v1 metadata per layer, and `repositories`."""
    parts = path.split("/")
    return path == "repositories" or (len(parts) == 2 and parts[1] in ("json", "VERSION"))


class Ingest:
    """Consumes one archive, writing its blobs into the content store of `ns` (bound to a lease)."""

    def __init__(self, ns: Namespaced, limits: ImportLimits) -> None:
        self.ns = ns
        self.store = ContentStore(ns)
        self.limits = limits
        self.op = uuid.uuid4().hex[:12]
        self._seq = 0
        self._buffered = 0
        self.contents = ArchiveContents()

    async def run(self, reader: ByteReader) -> ArchiveContents:
        tr = TarReader(
            reader,
            max_members=self.limits.max_members,
            max_extension=self.limits.max_header_extension,
            max_names=self.limits.max_names_total,
        )
        c = self.contents
        async for member in tr.members():
            path = clean_path(member.name)
            if member.kind is Kind.DIR or not path:
                continue
            digest = blob_digest(path)
            if member.kind is not Kind.FILE:
                if digest is not None:
                    target = f" to {member.linkname!r}" if member.linkname else ""
                    raise InvalidArgument(
                        f"archive member {path!r} is a {member.kind.value}{target}; "
                        "blobs must be regular files"
                    )
                c.entries[path] = Entry(path, member.kind, member.linkname)
                c.blobs.pop(path, None)
                continue
            c.entries.pop(path, None)
            if path in DOCUMENTS:
                c.documents[path] = await self._document(tr, member, path)
            elif digest is not None:
                self._add(await self._store(tr, member, path, digest))
            elif _skippable(path) or OCI_LAYOUT in c.documents:
                continue  # an OCI layout reads only blobs/; the rest is docker-save or clutter
            else:
                self._add(await self._store(tr, member, path, None))
        c.members = tr.count
        return c

    def _add(self, blob: Blob) -> None:
        self.contents.blobs[blob.path] = blob
        self.contents.by_digest.setdefault(blob.digest, blob)

    async def _document(self, tr: TarReader, member: Member, path: str) -> bytes:
        if member.size > self.limits.max_metadata:
            raise InvalidArgument(
                f"archive member {path} is {member.size} bytes, "
                f"over the {self.limits.max_metadata} byte limit"
            )
        parts = []
        while piece := await tr.read():
            parts.append(piece)
        return b"".join(parts)

    async def _store(self, tr: TarReader, member: Member, path: str, expected: str | None) -> Blob:
        """Stream one member into the content store; checks it against `expected` when the name gives it."""
        algorithm = expected.partition(":")[0] if expected else "sha256"
        h = hashlib.new(algorithm)

        def seal() -> str:
            """The digest of what was read, checked against the name's."""
            digest = f"{algorithm}:{h.hexdigest()}"
            self._check(path, expected, digest)
            return digest

        if (
            member.size <= self.limits.max_buffered_member
            and self._buffered + member.size <= self.limits.max_buffered_total
        ):
            self._buffered += member.size
            data = await self._document(tr, member, path)
            h.update(data)
            return Blob(path, seal(), member.size, sniff(data[:BLOCK]), data)
        head = b""

        async def hashed() -> AsyncIterator[bytes]:
            nonlocal head
            while piece := await tr.read():
                if len(head) < BLOCK:
                    head += piece[: BLOCK - len(head)]
                h.update(piece)
                yield piece

        # Held before the commit (hold): a commit that finds the blob present leases
        # nothing, and an unreferenced one could be collected before a hold after it, with the
        # streamed bytes already dropped. Held first, it either stays or is recreated from our
        # ingest. One lease write per member too large to buffer: cheap. `seal` gives containerd
        # the digest even for docker-save members: it checks it, and reports a blob that already
        # exists with it.
        writer = await self._open(self._ref(), member.size, expected or "")
        await copy(
            self.store,
            writer,
            hashed(),
            size=member.size,
            digest=expected or "",
            hold=True,
            abort=True,
            seal=seal,
        )
        # (again: a blob found present was read, not written, and `copy` sealed nothing)
        return Blob(path, seal(), member.size, sniff(head))

    @staticmethod
    def _check(path: str, expected: str | None, digest: str) -> None:
        if expected and digest != expected:
            raise InvalidArgument(
                f"archive member {path} does not match its name: its content has digest {digest}"
            )

    def _ref(self) -> str:
        """A fresh ingest ref: ours alone, so an abort never touches another client's ingest."""
        self._seq += 1
        return f"imaged-import-{self.op}-{self._seq}"

    async def _open(self, ref: str, total: int, expected: str) -> Writer | None:
        try:
            return await self.store.open_writer(ref, total=total, expected=expected)
        except BaseException:
            # Cancelled or failed after containerd may have created the ingest.
            await finish(self.store.discard(ref))
            raise

    async def write_blob(self, data: bytes, digest: str, labels: dict[str, str]) -> None:
        """Store a blob held in memory (a small member, a synthesized manifest) with its labels.

        containerd leases what a commit creates, or what a writer finds on opening, in the same
        transaction; not what the commit itself finds present (another client's, committed
        meanwhile). That case is rare, so the blob is held after the commit (a hold before would
        cost a metadata write per small blob) and written again if it was collected meanwhile.
        """
        for _ in range(_REWRITES):
            writer = await self._open(self._ref(), len(data), digest)
            written = await copy(
                self.store, writer, data, size=len(data), digest=digest, labels=labels, hold=True, abort=True
            )
            if written != "collected":
                return
        raise errors.Unavailable(
            f"blob {digest} kept being collected by containerd as this import wrote it; try again"
        )
