"""Which image records an image gets, per namespace.

CRI (k8s.io) keys its cache on three records, all labelled `io.cri-containerd.image=managed`:
the id `sha256:<config digest>`, the repo tag and the repo digest. The system namespace gets the
reference implementation's aliases, which are the same three names.
"""

from __future__ import annotations

from dataclasses import dataclass

from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.images import ImageStore
from imaged.pb.containerd.types import descriptor_pb2
from imaged.registry.reference import Reference

CRI_NAMESPACE = "k8s.io"


@dataclass(frozen=True, slots=True)
class Target:
    media_type: str
    digest: str
    size: int

    def pb(self) -> descriptor_pb2.Descriptor:
        return descriptor_pb2.Descriptor(media_type=self.media_type, digest=self.digest, size=self.size)


def record_names(ref: Reference, target_digest: str, config_digest: str) -> list[str]:
    """Tag record first (if any), then the repo digest, then the id."""
    names = []
    if ref.tag:
        names.append(f"{ref.repository}:{ref.tag}")
    names.append(ref.pinned(target_digest))
    names.append(config_digest)
    return names


def is_alias(name: str) -> bool:
    """An id (`sha256:...`) or repo digest (`repo@sha256:...`) record, as opposed to a tag."""
    return name.startswith("sha256:") or "@" in name


async def create_records(
    ns: Namespaced,
    ref: Reference,
    target: Target,
    config_digest: str,
    extra_labels: dict[str, str] | None = None,
) -> list[str]:
    """Create (or repoint) the records; the tag record is written last so it appears complete."""
    labels = dict(extra_labels or {})
    if ns.namespace == CRI_NAMESPACE:
        labels[L.CRI_MANAGED] = "managed"
    store = ImageStore(ns)
    names = record_names(ref, target.digest, config_digest)
    for name in reversed(names):
        await store.put(name, target.pb(), labels)
    return names
