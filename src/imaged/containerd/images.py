"""Image records: name -> target descriptor, with labels, as typed records (containerd's
images.Image), so no caller handles the protobufs of the images service."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import field_mask_pb2

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.pb.containerd.services.images.v1 import images_pb2
from imaged.pb.containerd.types import descriptor_pb2


@dataclass(frozen=True, slots=True)
class Target:
    """What a record points at: a manifest or an index."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    target: Target
    labels: dict[str, str] = field(default_factory=dict)
    # Nanoseconds since the epoch, as containerd keeps them (a datetime would drop the last three
    # digits, and a record untouched since its creation has both equal).
    created_at: int = 0
    updated_at: int = 0


def _image(pb: images_pb2.Image) -> Image:
    t = pb.target
    return Image(
        pb.name,
        Target(t.media_type, t.digest, t.size),
        dict(pb.labels),
        pb.created_at.ToNanoseconds(),
        pb.updated_at.ToNanoseconds(),
    )


def _pb(name: str, target: Target, labels: dict[str, str]) -> images_pb2.Image:
    """A record to write: a label given with an empty value is not set (an update removes it)."""
    descriptor = descriptor_pb2.Descriptor(
        media_type=target.media_type, digest=target.digest, size=target.size
    )
    # Each label cut to containerd's size limit (key and value 4096 bytes), between characters.
    return images_pb2.Image(name=name, target=descriptor, labels=L.fit_all(labels))


class ImageStore:
    def __init__(self, ns: Namespaced) -> None:
        self.ns = ns

    async def list(self, *filters: str) -> list[Image]:
        resp = await self.ns.call(self.ns.images.List, images_pb2.ListImagesRequest(filters=list(filters)))
        return [_image(pb) for pb in resp.images]

    async def get(self, name: str) -> Image | None:
        try:
            resp = await self.ns.call(self.ns.images.Get, images_pb2.GetImageRequest(name=name))
        except errors.NotFound:
            return None
        return _image(resp.image)

    async def put(self, name: str, target: Target, labels: dict[str, str]) -> bool:
        """Create the record, or point an existing one at `target` with these labels; return
        whether it was created (a caller undoing its work must not delete what it only updated).

        A label given with an empty value is removed from an existing record (and not set on a new one).
        """
        image = _pb(name, target, labels)
        try:
            await self.ns.call(self.ns.images.Create, images_pb2.CreateImageRequest(image=image))
            return True
        except errors.AlreadyExists:
            pass
        await self._update(name, target, labels)
        return False

    async def update(self, name: str, target: Target, labels: dict[str, str]) -> Image | None:
        """Point an existing record at `target` with these labels (an empty value removes one);
        the record as updated, or None if there is no such record. For a record known to exist:
        no Create first."""
        try:
            return await self._update(name, target, labels)
        except errors.NotFound:
            return None

    async def _update(self, name: str, target: Target, labels: dict[str, str]) -> Image:
        mask = field_mask_pb2.FieldMask(paths=["target", *(f"labels.{k}" for k in labels)])
        resp = await self.ns.call(
            self.ns.images.Update,
            images_pb2.UpdateImageRequest(image=_pb(name, target, labels), update_mask=mask),
        )
        return _image(resp.image)

    async def delete(self, name: str, *, sync: bool = True) -> None:
        await self.ns.call(self.ns.images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync))
