"""From an image record's target to the manifest the host would run, through the content store."""

from __future__ import annotations

from dataclasses import dataclass

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.images import Image, ImageStore
from imaged.containerd.unpack import Unpacker
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Manifest, parse_config, parse_index, parse_manifest
from imaged.oci.platform import host_platform, select


@dataclass(frozen=True, slots=True)
class Resolved:
    manifest: Manifest
    # Sizes of the index(es) and the manifest walked to get there.
    walked_size: int

    @property
    def size(self) -> int:
        """What containerd's images.Size counts: indexes, manifest, config and layers."""
        return self.walked_size + self.manifest.config.size + sum(la.size for la in self.manifest.layers)


async def host_manifest(
    content: ContentStore, media_type: str, digest: str, size: int, depth: int = 0
) -> Resolved:
    """Raises NotFound when a needed blob is missing or no entry fits the host platform."""
    data = await content.read_all(digest, mt.MAX_MANIFEST_SIZE)
    if mt.is_index(media_type) or (not mt.is_manifest(media_type) and b'"manifests"' in data):
        if depth >= mt.MAX_INDEX_DEPTH:
            raise errors.InvalidArgument(f"index nesting deeper than {mt.MAX_INDEX_DEPTH} at {digest}")
        for d in select(parse_index(data, f"index {digest}").manifests):
            try:
                inner = await host_manifest(content, d.media_type, d.digest, d.size, depth + 1)
            except errors.NotFound:
                continue
            return Resolved(inner.manifest, size + inner.walked_size)
        raise errors.NotFound(f"no manifest for {host_platform()} in {digest}")
    return Resolved(parse_manifest(data, f"manifest {digest}"), size)


async def unpacked_record(
    ns: Namespaced, name: str, digest: str | None, snapshotter: str
) -> tuple[Image, str] | None:
    """The record `name` and its image id (the config digest) when the record names `digest`
    (None: whatever it names) and that image is whole here: the host's manifest and config in
    the content store and its layers unpacked with `snapshotter`. None otherwise: a pull has work
    to do. (What Pull and CRI PullImage ask before handing an image back without pulling it.)"""
    image = await ImageStore(ns).get(name)
    if image is None or (digest is not None and image.target.digest != digest):
        return None
    content = ContentStore(ns)
    try:
        t = image.target
        manifest = (await host_manifest(content, t.media_type, t.digest, t.size)).manifest
        config = parse_config(await content.read_all(manifest.config.digest, mt.MAX_CONFIG_SIZE))
    except (errors.NotFound, errors.InvalidArgument, errors.ResourceExhausted):
        return None
    if not await Unpacker(ns, snapshotter).is_unpacked(manifest.config.digest, config.diff_ids):
        return None
    return image, manifest.config.digest
