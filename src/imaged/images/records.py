"""Which image records an image gets, per namespace.

CRI (k8s.io) keys its cache on three records, all labelled `io.cri-containerd.image=managed`:
the id `sha256:<config digest>` (CRI's image id), the repo tag and the repo digest. Other
namespaces (`system`) get the reference implementation's aliases there: the tag, the repo digest
and `sha256:<manifest or index digest>`, the digest `List` shows, as Talos's machined names them.
"""

from __future__ import annotations

import logging

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.containerd.images import ImageStore, Target
from imaged.containerd.leases import finish
from imaged.registry.reference import Reference

CRI_NAMESPACE = "k8s.io"
log = logging.getLogger(__name__)


def record_names(ref: Reference, target_digest: str, config_digest: str, namespace: str) -> list[str]:
    """Tag record first (if any), then the repo digest, then the id alias (see the module docstring)."""
    names = []
    if ref.tag:
        names.append(f"{ref.repository}:{ref.tag}")
    names.append(ref.pinned(target_digest))
    names.append(config_digest if namespace == CRI_NAMESPACE else target_digest)
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
    *,
    created: list[str] | None = None,
) -> list[str]:
    """Create (or repoint) the records; the tag record is written last so it appears complete.

    containerd has no transaction over several records, so a failure or cancel part way deletes
    the records this call created: a pull or import that fails leaves no image behind, not even
    its aliases. Records that existed before are left as they are (a repoint is not undone).
    `created` collects the names made, for a caller making several images (`undo_records`).
    """
    labels = dict(extra_labels or {})
    # A record repointed to an image nobody verified must not keep an earlier image's verdict.
    labels.setdefault(L.VERIFIED, "")
    labels.setdefault(L.VERIFIED_RULE, "")
    if ns.namespace == CRI_NAMESPACE:
        labels[L.CRI_MANAGED] = "managed"
    store = ImageStore(ns)
    names = record_names(ref, target.digest, config_digest, ns.namespace)
    mine: list[str] = []
    try:
        for name in reversed(names):
            if await store.put(name, target, labels):
                mine.append(name)
    except BaseException:
        await finish(_undo(store, mine, {}))
        raise
    if created is not None:
        created += mine
    return names


async def undo_records(ns: Namespaced, created: list[str], updated: dict[str, int] | None = None) -> None:
    """Delete records made by earlier `create_records` calls of an operation that then failed;
    runs to the end even if the caller is cancelled. `updated`: when the operation itself last
    updated a record it made (containerd's CRI makes them, imaged labels them), which is still
    its own if nobody updated it after (nanoseconds, as `Image.updated_at`)."""
    await finish(_undo(ImageStore(ns), created, updated or {}))


async def _undo(store: ImageStore, names: list[str], updated: dict[str, int]) -> None:
    for name in reversed(names):
        try:
            image = await store.get(name)
            if image is None:
                continue
            if image.updated_at != image.created_at and image.updated_at != updated.get(name):
                # Another pull of the same image updated it since we made it: now theirs too.
                continue
            await store.delete(name, sync=False)
        except errors.NotFound:
            pass
        except errors.ImagedError as e:
            log.warning("could not remove record %s of a failed image creation: %s", name, e)
