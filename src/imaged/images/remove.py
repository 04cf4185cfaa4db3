"""Remove: what a person types finds the record; aliases do not outlive the image.

Decisions (documented in the README):
- The name is tried as given (any listed name works), then normalized (`nginx:1.27` ->
  `docker.io/library/nginx:1.27`, `nginx` -> `...:latest`).
- Removing a tag removes that tag; the image's alias records (`sha256:<id>`, `repo@digest`) go
  with it only when no other tag still points at the same target (like `docker rmi`).
- Removing an alias (an id or a repo digest) removes the image: every record with that target.
- The last delete is synchronous, so content and snapshots are collected before we answer.
"""

from __future__ import annotations

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.containerd.images import Image, ImageStore
from imaged.images.records import is_alias
from imaged.registry.reference import parse


async def _find(store: ImageStore, ref: str) -> Image | None:
    if not ref:
        raise errors.InvalidArgument("image reference is empty")
    found = await store.get(ref)
    if found is not None:
        return found
    if ref.startswith("sha256:"):
        return None
    try:
        normalized = str(parse(ref))
    except errors.InvalidArgument as e:
        raise errors.InvalidArgument(f"cannot remove {ref!r}: {e.message}") from e
    return await store.get(normalized) if normalized != ref else None


async def remove_image(ns: Namespaced, ref: str) -> list[str]:
    """Remove the image `ref` names; return the record names deleted."""
    store = ImageStore(ns)
    image = await _find(store, ref)
    if image is None:
        raise errors.NotFound(f"image {ref} not found")
    target = image.target.digest
    same = [img.name for img in await store.list(f"target.digest=={target}") if img.name != image.name]
    others_tagged = [n for n in same if not is_alias(n)]
    if is_alias(image.name) or not others_tagged:
        doomed = [image.name, *same]
    else:
        doomed = [image.name]
    # Tags first, then aliases; only the last delete waits for garbage collection.
    doomed.sort(key=is_alias)
    for i, name in enumerate(doomed):
        try:
            await store.delete(name, sync=i == len(doomed) - 1)
        except errors.NotFound:
            if name == image.name:
                raise errors.NotFound(f"image {ref} not found") from None
    return doomed
