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
    return {k: v for i, d in enumerate(children) for k, v in index_child_label(i, d).items()}


def index_child_label(position: int, child: Descriptor) -> dict[str, str]:
    """One manifest of an index, keyed by its position in the index (not among those fetched):
    a pull of one platform then never repoints the label that holds another platform's manifest."""
    return {f"{L.GC_REF_CONTENT}.m.{position}": child.digest}


def distribution_source(host: str, repository_path: str) -> dict[str, str]:
    """Where a blob came from, so a later cross-repository pull can mount it (containerd's label)."""
    return {f"{L.DISTRIBUTION_SOURCE}.{host}": repository_path}
