"""An OCI image layout on disk as the registry of one image, for `imagectl policy test --offline`.

`cosign save --dir DIR IMAGE` writes the image (index.json entry annotated `kind:
dev.cosignproject.cosign/image` or `.../imageIndex`), the manifests of its `.sig` and `.att` tags
(`.../sigs`, `.../atts`) and, as blobs that index.json does not list, its OCI referrers (cosign 3's
bundles: signatures and attestations). `LayoutRegistry` answers what verification asks a
registry (`discovery.RegistryAPI`) from that directory, so the policy is evaluated by the same
code as online, without a daemon or the network:

- the tag names the layout's image (cosign save records no tag: the directory stands for it);
  a digest reference must be that image's digest;
- the referrers of the image are the manifests among the layout's blobs whose `subject` is it
  (listed in index.json or not); the `sha256-<hex>.sig` / `.att` tags are the `sigs` / `atts`
  entries;
- every blob read is checked against its digest (DATA_LOSS otherwise) and bounded: index.json and
  manifests 4 MiB, signature blobs as discovery asks (1 MiB), and the referrer scan looks at most
  at MAX_SCANNED blobs, reads only those of at most MAX_REFERRER_SIZE bytes, MAX_SCAN_BYTES in all.

Nothing here is a verdict: annotations only say where to look, every signature still has to
verify for the digest under the rule.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
from collections.abc import Awaitable, Callable, Collection, Iterable

from imaged.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from imaged.oci import jsondoc
from imaged.oci import mediatypes as mt
from imaged.oci.digest import SHA256_RE, validate_digest
from imaged.oci.manifest import Descriptor, Index, media_type_of, parse_index, parse_manifest
from imaged.registry.auth import Credentials
from imaged.registry.client import FetchedManifest
from imaged.registry.reference import Reference, parse
from imaged.verify.discovery import tag_for
from imaged.verify.files import read_regular_file

KIND = "kind"
KIND_IMAGE = "dev.cosignproject.cosign/image"
KIND_INDEX = "dev.cosignproject.cosign/imageIndex"
KIND_SIGS = "dev.cosignproject.cosign/sigs"
KIND_ATTS = "dev.cosignproject.cosign/atts"
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
INDEX_JSON = "index.json"
MAX_DOCUMENT = mt.MAX_MANIFEST_SIZE
MAX_SCANNED = 4096
MAX_REFERRER_SIZE = 64 * 1024
MAX_SCAN_BYTES = 16 * 1024 * 1024


def is_layout(path: pathlib.Path) -> bool:
    return (path / INDEX_JSON).is_file() and (path / "oci-layout").is_file()


def layout_path(root: pathlib.Path, image: str, *, single: bool) -> pathlib.Path:
    """Where the layout of `image` is: `root` itself when it is a layout and `single` (one image is
    tested), else `root/<image as written>`, else `root/<image normalized>`. The path is returned
    even when it does not exist (the registry says so when asked, so that a rule that needs no
    registry still decides). Raises InvalidArgument for a name that would leave `root`."""
    if is_layout(root):
        if not single:
            raise InvalidArgument(
                f"{root} is one OCI layout, so it can stand for one image only; for several, give a "
                "directory holding a layout per image at <dir>/<image>"
            )
        return root
    candidates = [image]
    normalized = str(parse(image))
    if normalized != image:
        candidates.append(normalized)
    for name in candidates:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(f"image {image!r} cannot name a directory under {root}")
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root / image


class LayoutRegistry:
    """The registry API over the layout at `path`, for the image `image` (see the module)."""

    def __init__(self, path: pathlib.Path, image: str) -> None:
        self.path = path
        self.image = image
        self._entries: tuple[Descriptor, ...] | None = None
        self._referrers: Index | None = None

    # -- RegistryClientLike: credentials mean nothing to a directory ------------------------------

    def with_credentials(self, host: str, username: str, password: str) -> LayoutRegistry:
        return self

    def request_credentials_only(self) -> LayoutRegistry:
        return self

    def with_auth(self, host: str, creds: Credentials) -> LayoutRegistry:
        return self

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, rel: str, limit: int, what: str) -> bytes:
        try:
            data = read_regular_file(self.path / rel, limit)
        except FileNotFoundError:
            raise NotFound(f"{what} is not in the layout {self.path}") from None
        except OSError as e:
            raise InvalidArgument(f"cannot read {what} in {self.path}: {e.strerror}") from None
        if len(data) > limit:
            raise ResourceExhausted(f"{what} in {self.path} is over the {limit} byte limit")
        return data

    def _no_layout(self) -> NotFound:
        return NotFound(
            f"no OCI layout for {self.image} at {self.path} (write one with "
            f"`cosign save --dir {self.path} {self.image}`)"
        )

    def _blob(self, digest: str, limit: int, what: str = "") -> bytes:
        validate_digest(digest)
        if not SHA256_RE.fullmatch(digest):
            raise NotFound(f"blob {digest} is not in the layout {self.path} (sha256 blobs only)")
        data = self._read(f"blobs/sha256/{digest[7:]}", limit, what or f"blob {digest}")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DataLoss(f"blob {digest} in the layout {self.path} does not match its digest (altered)")
        return data

    def entries(self) -> tuple[Descriptor, ...]:
        if self._entries is None:
            if not self.path.is_dir():
                raise self._no_layout()
            try:
                doc = self._read(INDEX_JSON, MAX_DOCUMENT, INDEX_JSON)
            except NotFound:
                raise self._no_layout() from None
            self._entries = parse_index(doc, f"{self.path}/{INDEX_JSON}").manifests
        return self._entries

    def _kind(self, kind: str) -> Descriptor | None:
        found = [d for d in self.entries() if d.annotations.get(KIND) == kind]
        if len(found) > 1:
            raise InvalidArgument(f"{self.path}/{INDEX_JSON} lists {len(found)} entries of kind {kind}")
        return found[0] if found else None

    def image_descriptor(self) -> Descriptor:
        """The layout's image: cosign's `kind` entry, else the entry named like the image, else
        the only entry."""
        images = [d for d in self.entries() if d.annotations.get(KIND) in (KIND_IMAGE, KIND_INDEX)]
        if not images:
            ref = parse(self.image)
            names = {self.image, str(ref), ref.tag or ""} - {""}
            images = [
                d for d in self.entries() if any(d.annotations.get(a) in names for a in NAME_ANNOTATIONS)
            ]
        if not images and len(self.entries()) == 1:
            images = list(self.entries())
        if len(images) != 1:
            raise InvalidArgument(
                f"cannot tell which image of the layout {self.path} is {self.image}: "
                f"{len(images)} candidates in {INDEX_JSON} (cosign save writes one, kind {KIND_IMAGE})"
            )
        return images[0]

    def _require(self, digest: str) -> Descriptor:
        image = self.image_descriptor()
        if image.digest != digest:
            raise NotFound(f"the layout {self.path} holds the image {image.digest}, not {digest}")
        return image

    async def resolve(self, ref: Reference) -> Descriptor:
        image = self.image_descriptor()
        if not (mt.is_manifest(image.media_type) or mt.is_index(image.media_type)):
            raise InvalidArgument(f"the layout's image {image.digest} is a {image.media_type}")
        self._blob(image.digest, MAX_DOCUMENT, f"the image manifest {image.digest}")
        return image

    async def get_manifest(
        self, ref: Reference, obj: str, *, accept: str = "", max_size: int | None = None
    ) -> FetchedManifest:
        limit = min(max_size or MAX_DOCUMENT, MAX_DOCUMENT)
        if SHA256_RE.fullmatch(obj) or ":" in obj:
            digest = obj
        else:
            digest = self._tag(obj)
        body = self._blob(digest, limit, f"manifest {digest}")
        try:
            media_type = media_type_of(body, mt.OCI_MANIFEST)
        except InvalidArgument as e:
            raise InvalidArgument(f"manifest {digest} in {self.path}: {e.message}") from None
        return FetchedManifest(body, media_type, digest)

    def _tag(self, tag: str) -> str:
        """The digest a tag names: the image's `.sig` and `.att` tags are cosign's entries, the
        image's own tag is the image."""
        image = self.image_descriptor()
        named = {tag_for(image.digest, ".sig"): KIND_SIGS, tag_for(image.digest, ".att"): KIND_ATTS}
        if tag in named:
            entry = self._kind(named[tag])
            if entry is not None:
                return entry.digest
        elif tag == parse(self.image).tag:
            return image.digest
        raise NotFound(f"no tag {tag} in the layout {self.path}")

    async def get_blob(self, ref: Reference, digest: str, *, max_size: int) -> bytes:
        return self._blob(digest, max_size)

    async def referrers(self, ref: Reference, digest: str, *, artifact_type: str | None = None) -> Index:
        """The manifests among the layout's blobs whose subject is the image (the referrers API)."""
        self._require(digest)
        if self._referrers is None:
            self._referrers = Index(mt.OCI_INDEX, tuple(await self._scan(digest)))
        listed = self._referrers.manifests
        if artifact_type is not None:
            listed = tuple(d for d in listed if d.artifact_type == artifact_type)
        return Index(mt.OCI_INDEX, listed)

    async def _scan(self, digest: str) -> list[Descriptor]:
        directory = self.path / "blobs" / "sha256"
        try:
            with os.scandir(directory) as it:
                names: list[str] = []
                for entry in it:
                    if len(names) >= MAX_SCANNED:
                        raise ResourceExhausted(
                            f"the layout {self.path} has more than {MAX_SCANNED} blobs; "
                            "save one image per layout"
                        )
                    names.append(entry.name)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise InvalidArgument(f"cannot list the blobs of the layout {self.path}: {e.strerror}") from None
        blobs: list[tuple[str, int]] = []
        for name in names:
            path = directory / name
            if not SHA256_RE.fullmatch("sha256:" + name):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                blobs.append((f"sha256:{name}", st.st_size))

        async def read(blob: str, limit: int) -> bytes | None:
            try:
                return read_regular_file(directory / blob[7:], limit)
            except OSError:
                return None

        found = await scan_referrers(blobs, read, {digest}, f"the layout {self.path}")
        return found.get(digest, [])


ReadBlob = Callable[[str, int], Awaitable[bytes | None]]


async def scan_referrers(
    blobs: Iterable[tuple[str, int]], read: ReadBlob, subjects: Collection[str], where: str
) -> dict[str, list[Descriptor]]:
    """The manifests among `blobs` whose `subject` is one of `subjects` (OCI referrers that no
    index lists, as `cosign save` keeps cosign 3's bundles), as descriptors by subject.

    `blobs` are (digest, size) pairs, looked at in digest order; `read(digest, limit)` gives at
    most `limit + 1` bytes of a blob, None when it cannot be read. Shared by the offline layout
    reader and Import, with the same bounds: only sha256 blobs of 1 to MAX_REFERRER_SIZE bytes are
    read, at most MAX_SCANNED of them and MAX_SCAN_BYTES in all (ResourceExhausted, before any is
    read, when there are more).
    A manifest naming a subject must hash to its digest (DataLoss otherwise): nothing here is a
    verdict, the caller verifies what the manifests carry."""
    candidates = sorted(
        (blob, size) for blob, size in blobs if SHA256_RE.fullmatch(blob) and 0 < size <= MAX_REFERRER_SIZE
    )
    if len(candidates) > MAX_SCANNED:
        raise ResourceExhausted(
            f"looking for referrers in {where}: more than {MAX_SCANNED} blobs of at most "
            f"{MAX_REFERRER_SIZE} bytes to read"
        )
    if sum(size for _, size in candidates) > MAX_SCAN_BYTES:
        raise ResourceExhausted(f"looking for referrers in {where} would read over {MAX_SCAN_BYTES} bytes")
    found: dict[str, list[Descriptor]] = {}
    spent = 0  # what was read, not what was listed: a file may grow after it was listed
    for blob, _ in candidates:
        data = await read(blob, MAX_REFERRER_SIZE)
        spent += len(data or b"")
        if spent > MAX_SCAN_BYTES:
            raise ResourceExhausted(f"looking for referrers in {where} read over {MAX_SCAN_BYTES} bytes")
        if data is None or len(data) > MAX_REFERRER_SIZE:
            continue
        referrer = _referrer(data, blob, subjects, where)
        if referrer is not None:
            found.setdefault(referrer[0], []).append(referrer[1])
    return found


def _referrer(data: bytes, blob: str, subjects: Collection[str], where: str) -> tuple[str, Descriptor] | None:
    """(subject, descriptor) of the manifest `data` (the blob `blob`) if its subject is one of
    `subjects`."""
    if not data.startswith(b"{") or b'"subject"' not in data:
        return None
    try:
        doc = jsondoc.loads(data)
        if not isinstance(doc, dict) or not mt.is_manifest(media_type_of(doc, mt.OCI_MANIFEST)):
            return None
        manifest = parse_manifest(doc, f"manifest {blob}")
    except (ValueError, UnicodeDecodeError, InvalidArgument):
        return None
    if manifest.subject is None or manifest.subject.digest not in subjects:
        return None
    if "sha256:" + hashlib.sha256(data).hexdigest() != blob:
        raise DataLoss(f"blob {blob} in {where} does not match its digest (altered)")
    descriptor = Descriptor(
        manifest.media_type,
        blob,
        len(data),
        dict(manifest.annotations),
        artifact_type=manifest.artifact_type or manifest.config.media_type,
    )
    return manifest.subject.digest, descriptor
