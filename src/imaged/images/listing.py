"""List: one entry per record, with the size of what the host platform would run.

The size follows containerd's images.Size: the descriptors walked for the default platform
(index if any, one manifest, config, layers), so it equals what `ctr images ls` shows.
Manifests are immutable, so their parsed form is cached by digest across calls.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.containerd.content import ContentStore
from imaged.containerd.images import Image, ImageStore
from imaged.images.walk import host_manifest
from imaged.tasks import gather

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listed:
    image: Image
    size: int


class SizeCache:
    """Sizes by target digest; bounded LRU (targets are content-addressed, so never stale)."""

    def __init__(self, max_entries: int = 20000) -> None:
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.max_entries = max_entries

    def get(self, key: tuple[str, str]) -> int | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: tuple[str, str], size: int) -> None:
        self._data[key] = size
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)


async def list_images(ns: Namespaced, cache: SizeCache, *filters: str) -> AsyncIterator[Listed]:
    images = await ImageStore(ns).list(*filters)
    content = ContentStore(ns)

    async def sized(img: Image) -> Listed:
        key = (ns.namespace, img.target.digest)
        size = cache.get(key)
        if size is None:
            try:
                t = img.target
                size = (await host_manifest(content, t.media_type, t.digest, t.size)).size
                cache.put(key, size)
            except errors.ImagedError as e:
                if isinstance(e, errors.Unavailable):
                    raise
                log.debug("size of %s not computable: %s", img.name, e)
                size = 0
        return Listed(img, size)

    # Compute sizes in bounded batches so the first responses stream before the last are sized.
    batch = 256
    for i in range(0, len(images), batch):
        for listed in await gather(
            [functools.partial(sized, img) for img in images[i : i + batch]], limit=16
        ):
            yield listed
