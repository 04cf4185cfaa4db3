"""Child GC labels: how a parent blob keeps its children alive once no lease holds them."""

from __future__ import annotations

from collections.abc import Iterable

from imaged.containerd import labels as L
from imaged.oci.manifest import Descriptor, Manifest


def manifest_labels(manifest: Manifest) -> dict[str, str]:
    """config -> `gc.ref.content.config`, layers -> `gc.ref.content.l.<i>`."""
    out = {L.GC_REF_CONFIG: manifest.config.digest}
    for i, layer in enumerate(manifest.layers):
        out[f"{L.GC_REF_CONTENT}.l.{i}"] = layer.digest
    return out


def index_labels(children: Iterable[Descriptor]) -> dict[str, str]:
    """The manifests of an index that were fetched -> `gc.ref.content.m.<i>`."""
    return {f"{L.GC_REF_CONTENT}.m.{i}": d.digest for i, d in enumerate(children)}


def distribution_source(host: str, repository_path: str) -> dict[str, str]:
    """Where a blob came from, so a later cross-repository pull can mount it (containerd's label)."""
    return {f"{L.DISTRIBUTION_SOURCE}.{host}": repository_path}
