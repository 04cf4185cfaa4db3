"""From what an archive held to the images it defines (OCI image layout or docker-save).

Runs once the whole archive is in the content store (under the import's lease), because the
metadata may come last. Decides, per named image: its record target, the config its id record
names, the GC labels its blobs need, and whether (and what) to unpack for the host platform.
Every blob an image needs must have come in the archive; whatever is wrong is reported with the
entry, member and digest concerned.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass, field

from imaged.archive.ingest import INDEX_JSON, MANIFEST_JSON, OCI_LAYOUT, ArchiveContents, Blob
from imaged.archive.limits import ImportLimits
from imaged.archive.names import docker_names, oci_names
from imaged.archive.tar import Kind
from imaged.containerd.content import ContentStore
from imaged.containerd.gclabels import index_labels, manifest_labels
from imaged.errors import InvalidArgument
from imaged.oci import jsondoc
from imaged.oci import mediatypes as mt
from imaged.oci.digest import sha256_digest
from imaged.oci.manifest import (
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    parse_config,
    parse_index,
    parse_manifest,
)
from imaged.oci.platform import matches, select
from imaged.registry.reference import Reference

log = logging.getLogger(__name__)

# containerd's (>= 1.7) and BuildKit's name for a zstd layer in a Docker schema2 manifest. containerd 1.6
# cannot apply that type, so unpacking passes the equivalent OCI type instead (as BuildKit does).
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
_APPLY_AS = {DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD}
_DOCKER_LAYER_TYPES = {"tar": mt.DOCKER_LAYER, "gzip": mt.DOCKER_LAYER_GZIP, "zstd": DOCKER_LAYER_ZSTD}
LAYOUT_VERSION = "1.0.0"


@dataclass(frozen=True, slots=True)
class UnpackPlan:
    config_digest: str
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlannedImage:
    names: tuple[Reference, ...]
    target: Descriptor
    config_digest: str
    unpack: UnpackPlan | None
    what: str  # where the archive defines it, for messages


@dataclass(frozen=True, slots=True)
class NewBlob:
    """Content the archive does not hold but the image needs (a synthesized docker manifest)."""

    data: bytes
    digest: str
    labels: dict[str, str]


@dataclass
class Plan:
    format: str  # "oci" or "docker"
    images: list[PlannedImage] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # digest -> GC labels
    new_blobs: dict[str, NewBlob] = field(default_factory=dict)
    # Archive blobs the images reach: those still held in memory must be written before records exist.
    needed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Visit:
    config_digest: str | None
    unpack: UnpackPlan | None
    # What the archive lacks for the host to know whether (or run) this image: a platform-less
    # manifest without its config; a host entry whose manifest, config or layers are absent.
    missing: str = ""


def _named(p: Platform | None) -> str:
    return str(p) if p is not None and (p.os or p.architecture) else "no platform"


def _appliable(layers: tuple[Descriptor, ...]) -> tuple[Descriptor, ...]:
    return tuple(
        Descriptor(_APPLY_AS[d.media_type], d.digest, d.size) if d.media_type in _APPLY_AS else d
        for d in layers
    )


def docker_manifest_bytes(m: Manifest) -> bytes:
    """A Docker schema2 manifest serialized like containerd's importer (compact, Go field order)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": m.media_type,
        "config": m.config.to_json(),
        "layers": [layer.to_json() for layer in m.layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class Planner:
    def __init__(
        self, contents: ArchiveContents, store: ContentStore, platform: Platform, limits: ImportLimits
    ) -> None:
        self.c = contents
        self.store = store
        self.platform = platform
        self.limits = limits
        self._configs: dict[str, ImageConfig] = {}
        self._platforms: dict[str, Platform | None] = {}
        self._visits: dict[tuple[str, bool], _Visit] = {}
        self._needed: set[str] = set()

    async def plan(self) -> Plan:
        docs = self.c.documents
        if OCI_LAYOUT in docs:
            plan = await self._oci()
        elif MANIFEST_JSON in docs:
            plan = await self._docker()
        elif INDEX_JSON in docs:
            raise InvalidArgument(
                "the archive has index.json but no oci-layout file, so it is no OCI image layout"
            )
        else:
            raise InvalidArgument(
                "the archive is not an image archive: it has neither oci-layout and index.json "
                "(OCI image layout) nor manifest.json (docker save)"
            )
        plan.needed = self._needed
        return plan

    # -- shared ------------------------------------------------------------------------------------

    def _present(self, d: Descriptor, what: str) -> Blob:
        blob = self.c.by_digest.get(d.digest)
        if blob is None:
            raise InvalidArgument(f"{what}: blob {d.digest} is not in the archive")
        if blob.size != d.size:
            raise InvalidArgument(
                f"{what}: blob {d.digest} is {blob.size} bytes in the archive, "
                f"but its descriptor says {d.size}"
            )
        self._needed.add(d.digest)
        return blob

    def _keep(self, d: Descriptor) -> None:
        """Keep a blob an image reaches without needing it (another platform's config or layer)."""
        blob = self.c.by_digest.get(d.digest)
        if blob is not None and blob.size == d.size:
            self._needed.add(d.digest)

    async def _read(self, d: Descriptor, what: str) -> bytes:
        blob = self._present(d, what)
        if d.size > self.limits.max_metadata:
            raise InvalidArgument(
                f"{what}: {d.digest} is {d.size} bytes, over the {self.limits.max_metadata} byte limit "
                "for manifests, indexes and configs"
            )
        if blob.data is not None:
            return blob.data
        return await self.store.read_all(d.digest, self.limits.max_metadata)

    async def _config(self, d: Descriptor, what: str) -> ImageConfig:
        if d.digest not in self._configs:
            self._configs[d.digest] = await self._parse_config(d, what)
        return self._configs[d.digest]

    async def _config_platform(self, d: Descriptor, what: str) -> Platform | None:
        """Only the platform is kept of a config read to choose a manifest: an index may list
        thousands, and each may carry up to max_layers diff_ids."""
        if d.digest in self._configs:
            return self._configs[d.digest].platform
        if d.digest not in self._platforms:
            self._platforms[d.digest] = (await self._parse_config(d, what)).platform
        return self._platforms[d.digest]

    async def _parse_config(self, d: Descriptor, what: str) -> ImageConfig:
        cwhat = f"{what} config {d.digest}"
        config = parse_config(await self._read(d, cwhat), cwhat)
        self._check_layers(len(config.diff_ids), cwhat)
        return config

    def _label(self, plan: Plan, digest: str, labels: dict[str, str]) -> None:
        plan.labels.setdefault(digest, {}).update(labels)

    def _check_layers(self, n: int, what: str) -> None:
        if n > self.limits.max_layers:
            raise InvalidArgument(f"{what} has {n} layers, over the limit of {self.limits.max_layers}")

    # -- OCI image layout --------------------------------------------------------------------------

    async def _oci(self) -> Plan:
        plan = Plan("oci")
        try:
            layout = jsondoc.loads(self.c.documents[OCI_LAYOUT])
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"oci-layout is not valid JSON: {e}") from None
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != LAYOUT_VERSION:
            raise InvalidArgument(
                f"oci-layout has imageLayoutVersion {version!r}; only {LAYOUT_VERSION!r} is supported"
            )
        if INDEX_JSON not in self.c.documents:
            raise InvalidArgument("the archive has an oci-layout file but no index.json")
        index = parse_index(self.c.documents[INDEX_JSON], "index.json")
        if len(index.manifests) > self.limits.max_images:
            raise InvalidArgument(
                f"index.json lists {len(index.manifests)} images, over the limit of {self.limits.max_images}"
            )
        for i, d in enumerate(index.manifests):
            what = f"index.json entry {i} ({d.digest})"
            names = oci_names(d.annotations, f"index.json entry {i}")
            if not names:
                log.info("import: %s has no image name; skipped", what)
                continue
            if mt.is_index(d.media_type):
                visit = await self._index(plan, d, what, 0)
                if visit.config_digest is None:
                    raise InvalidArgument(f"{what}: none of the index's manifests is in the archive")
            elif mt.is_manifest(d.media_type):
                visit = await self._manifest(plan, d, what, required=True)
            else:
                raise InvalidArgument(
                    f"{what} has media type {d.media_type!r}, which is not an image manifest or index"
                )
            assert visit.config_digest is not None
            target = Descriptor(d.media_type, d.digest, d.size)
            plan.images.append(PlannedImage(tuple(names), target, visit.config_digest, visit.unpack, what))
        return plan

    async def _manifest(self, plan: Plan, d: Descriptor, what: str, *, required: bool) -> _Visit:
        """A manifest: labelled always; config and layers checked if required or for the host."""
        key = (d.digest, required)
        if key in self._visits:
            return self._visits[key]
        m = parse_manifest(await self._read(d, what), what)
        self._check_layers(len(m.layers), what)
        self._label(plan, d.digest, manifest_labels(m))
        platform = d.platform
        config: ImageConfig | None = None
        if platform is None and m.config.digest in self.c.by_digest:
            platform = await self._config_platform(m.config, what)
        host = platform is not None and matches(self.platform, platform)
        missing = ""
        if platform is None:
            missing = (
                f"manifest {d.digest} names no platform and its config {m.config.digest} "
                "is not in the archive"
            )
        visit = _Visit(m.config.digest, None, missing)
        for blob in (m.config, *m.layers):
            self._keep(blob)
        if required or host:
            config = config or await self._config(m.config, what)
            for j, layer in enumerate(m.layers):
                self._present(layer, f"{what} layer {j}")
            if len(config.diff_ids) != len(m.layers):
                raise InvalidArgument(
                    f"{what}: config {m.config.digest} lists {len(config.diff_ids)} diff_ids "
                    f"for {len(m.layers)} layers"
                )
            if host:
                visit = _Visit(m.config.digest, UnpackPlan(m.config.digest, m.layers, config.diff_ids))
        self._visits[key] = visit
        return visit

    async def _index(self, plan: Plan, d: Descriptor, what: str, depth: int) -> _Visit:
        """An index: every child in the archive is labelled; the host's manifest must be there."""
        key = (d.digest, False)
        if key in self._visits:
            return self._visits[key]
        if depth >= self.limits.max_index_depth:
            raise InvalidArgument(f"{what}: indexes nest deeper than {self.limits.max_index_depth} levels")
        idx = parse_index(await self._read(d, what), what)
        if len(idx.manifests) > self.limits.max_index_entries:
            raise InvalidArgument(
                f"{what} has {len(idx.manifests)} entries, over the limit of {self.limits.max_index_entries}"
            )
        self._label(plan, d.digest, index_labels(idx.manifests))
        visits: dict[str, _Visit] = {}
        first_config: str | None = None
        for j, child in enumerate(idx.manifests):
            if child.digest not in self.c.by_digest or child.digest in visits:
                continue  # other platforms may be left out of an archive (docker save does)
            cwhat = f"{what} manifest {j} ({child.digest})"
            self._keep(child)
            if mt.is_index(child.media_type):
                visit = await self._index(plan, child, cwhat, depth + 1)
            elif mt.is_manifest(child.media_type):
                visit = await self._manifest(plan, child, cwhat, required=False)
            else:
                continue  # not an image: kept as content only
            visits[child.digest] = visit
            first_config = first_config or visit.config_digest
        candidates = select(idx.manifests, self.platform)
        best = next((c for c in candidates if c.platform is not None), None)
        if best is not None and best.digest not in self.c.by_digest:
            raise InvalidArgument(
                f"{what}: the manifest for {best.platform} ({best.digest}) is not in the archive"
            )
        unpackable = [visits[c.digest] for c in candidates if c.digest in visits and visits[c.digest].unpack]
        chosen = unpackable[0] if unpackable else None
        if chosen is None:
            # The entries the host would take (its platform's, or ones naming none) must be here
            # in full: recorded without them, the image could never run. An index of other
            # platforms only is kept, not unpacked, as a single foreign manifest is.
            missing = [
                f"the manifest for {_named(c.platform)} ({c.digest}) is not in the archive"
                if c.digest not in self.c.by_digest
                else visits[c.digest].missing
                for c in candidates
                if c.digest not in self.c.by_digest or (c.digest in visits and visits[c.digest].missing)
            ]
            if missing:
                raise InvalidArgument(f"{what}: {'; '.join(missing)}")
        result = chosen or _Visit(first_config, None)
        self._visits[key] = result
        return result

    # -- docker save -------------------------------------------------------------------------------

    def _member(self, path: str, what: str) -> Blob:
        """The stored member `path` names, following symlinks inside the archive (docker save makes them)."""
        if path.startswith("/"):
            raise InvalidArgument(f"{what} is the absolute path {path!r}")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InvalidArgument(f"{what} is the path {path!r}, which has a '..' component")
        p = "/".join(parts)
        hops = 0
        while (entry := self.c.entries.get(p)) is not None:
            if entry.kind is not Kind.SYMLINK:
                raise InvalidArgument(
                    f"{what}: archive member {p!r} is a {entry.kind.value}; expected a regular file"
                )
            hops += 1
            if hops > self.limits.max_link_hops:
                raise InvalidArgument(f"{what}: too many symbolic links resolving {path!r}")
            target = entry.linkname
            if target.startswith("/"):
                raise InvalidArgument(
                    f"{what}: archive member {p!r} is a symbolic link to the absolute path {target!r}"
                )
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(p), target))
            if joined in (".", "..") or joined.startswith("../"):
                raise InvalidArgument(
                    f"{what}: archive member {p!r} is a symbolic link to {target!r}, outside the archive"
                )
            p = joined
        blob = self.c.blobs.get(p)
        if blob is None:
            raise InvalidArgument(f"{what}: {path!r} is not in the archive")
        return blob

    async def _docker(self) -> Plan:
        plan = Plan("docker")
        try:
            doc = jsondoc.loads(self.c.documents[MANIFEST_JSON])
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"manifest.json is not valid JSON: {e}") from None
        if not isinstance(doc, list):
            raise InvalidArgument("manifest.json is not a JSON list of images")
        if len(doc) > self.limits.max_images:
            raise InvalidArgument(
                f"manifest.json lists {len(doc)} images, over the limit of {self.limits.max_images}"
            )
        for i, entry in enumerate(doc):
            what = f"manifest.json entry {i}"
            if not isinstance(entry, dict):
                raise InvalidArgument(f"{what} is not a JSON object")
            config_path, layer_paths = entry.get("Config"), entry.get("Layers")
            if not isinstance(config_path, str) or not config_path:
                raise InvalidArgument(f"{what} has no Config path")
            if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
                raise InvalidArgument(f"{what} has no Layers list of paths")
            names = docker_names(entry.get("RepoTags"), what)
            if not names:
                log.info("import: %s has no RepoTags; skipped", what)
                continue
            self._check_layers(len(layer_paths), what)
            config_blob = self._member(config_path, f"{what} Config")
            config_desc = Descriptor(mt.DOCKER_CONFIG, config_blob.digest, config_blob.size)
            config = await self._config(config_desc, what)
            if len(config.diff_ids) != len(layer_paths):
                raise InvalidArgument(
                    f"{what}: config {config_path!r} lists {len(config.diff_ids)} diff_ids "
                    f"for {len(layer_paths)} layers"
                )
            self._needed.add(config_blob.digest)
            layers = []
            for j, path in enumerate(layer_paths):
                blob = self._member(path, f"{what} layer {j}")
                self._needed.add(blob.digest)
                media_type = _DOCKER_LAYER_TYPES.get(blob.compression)
                if media_type is None:
                    raise InvalidArgument(
                        f"{what} layer {j} ({path!r}) is neither a tar archive "
                        "nor a gzip- or zstd-compressed one"
                    )
                layers.append(Descriptor(media_type, blob.digest, blob.size))
            manifest = Manifest(mt.DOCKER_MANIFEST, config_desc, tuple(layers))
            data = docker_manifest_bytes(manifest)
            digest = sha256_digest(data)
            plan.new_blobs[digest] = NewBlob(data, digest, manifest_labels(manifest))
            unpack = None
            if matches(self.platform, config.platform):
                unpack = UnpackPlan(config_blob.digest, _appliable(manifest.layers), config.diff_ids)
            target = Descriptor(mt.DOCKER_MANIFEST, digest, len(data))
            plan.images.append(PlannedImage(tuple(names), target, config_blob.digest, unpack, what))
        return plan
