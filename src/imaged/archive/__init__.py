"""ImageService.Import: OCI-layout and docker-save archives (plain, gzip or zstd) into containerd.

Entry point: `import_archive(ns, chunks, snapshotter=..., owner=..., lease_expire=...) -> names`.

Behaviour, where the reference (containerd's importer) leaves a choice:
- Format: `oci-layout` present -> OCI image layout (index.json; also Docker 25+ archives, whose
  manifest.json is then ignored); else `manifest.json` -> docker save; anything else is refused.
  The archive's compression is detected from its first bytes.
- Names: see `imaged.archive.names` (`io.containerd.image.name`, else a full-reference
  `org.opencontainers.image.ref.name`, else nothing; docker save: RepoTags). Unnamed images are
  not imported; an archive with none fails with "no images imported from archive". One name
  for two different images is refused rather than resolved by order.
- docker save: a schema2 manifest is synthesized per entry, byte-identical to containerd's
  (same digest as `ctr images import`); layer type from the layer's first bytes (tar, gzip, zstd;
  zstd as `...diff.tar.zstd`, applied as the OCI zstd type so containerd 1.6 can unpack it).
  Symlinks inside the archive (which docker and skopeo write) are followed; links that leave
  the archive, hard links, devices and FIFOs are refused where a blob is expected.
- Blobs named `blobs/<alg>/<hex>` must hash to their name. Every blob an image needs must be in
  the archive; blobs of other platforms of an index may be missing (as docker save leaves them).
- Images for the host platform are unpacked; others are kept as content with GC labels.
- Everything is written under one lease; records are created last; on any error nothing is
  recorded and the ingests opened are aborted. Limits: `ImportLimits`.
"""

from imaged.archive.importer import import_archive
from imaged.archive.limits import ImportLimits

__all__ = ["ImportLimits", "import_archive"]
