"""Bounds on what an archive may make the daemon do: a client controls every byte of it."""

from __future__ import annotations

from dataclasses import dataclass

from imaged.oci.mediatypes import MAX_INDEX_DEPTH, MAX_MANIFEST_SIZE


@dataclass(frozen=True, slots=True)
class ImportLimits:
    """Caps checked while reading an archive; crossing one is the client's fault (InvalidArgument)."""

    # Tar members (files, directories, links), not counting PAX/GNU extension headers.
    max_members: int = 100_000
    # Layers of one image manifest (or docker-save entry).
    max_layers: int = 1000
    # Images (index.json entries or manifest.json entries) in one archive.
    max_images: int = 1000
    # Entries of one index, and how deeply indexes may nest.
    max_index_entries: int = 10_000
    max_index_depth: int = MAX_INDEX_DEPTH
    # index.json, manifest.json, oci-layout, and every manifest, index and config read back.
    max_metadata: int = MAX_MANIFEST_SIZE
    # The PAX and GNU long-name headers before one member, all together.
    max_header_extension: int = 1024 * 1024
    # Member names and link targets are kept until the archive is planned: their total.
    max_names_total: int = 16 * 1024 * 1024
    # Symlinks followed to find one docker-save member.
    max_link_hops: int = 16
    # Members up to this size are held in memory (up to the total) instead of being written at once:
    # a content commit costs containerd an fsync, and only what an image references is written.
    max_buffered_member: int = 256 * 1024
    max_buffered_total: int = 32 * 1024 * 1024
    # zstd window: the decompressor allocates this much, so it is bounded (zstd -19 needs 8 MiB).
    max_zstd_window: int = 32 * 1024 * 1024
    # A compressed archive may expand this many times (tar bytes over compressed bytes read), once
    # past the floor: real images expand a few times, a decompression bomb thousands of times.
    max_expansion: int = 200
    expansion_floor: int = 1024 * 1024 * 1024
