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
    """Every manifest of an index -> `gc.ref.content.m.<i>`, i its position in the index."""
    return {index_child_key(i): d.digest for i, d in enumerate(children)}


def index_child_key(position: int) -> str:
    """The label of an index's manifest, keyed by its position in the index (not among those
    fetched): a pull of one platform never repoints the label holding another platform's manifest."""
    return f"{L.GC_REF_CONTENT}.m.{position}"


def distribution_source(host: str, repository_path: str) -> dict[str, str]:
    """Where a blob came from, so a later cross-repository pull can mount it (containerd's label)."""
    return {f"{L.DISTRIBUTION_SOURCE}.{host}": repository_path}
