"""Image records: name -> target descriptor, with labels."""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from imaged import errors
from imaged.containerd import labels as L
from imaged.containerd.client import Namespaced
from imaged.pb.containerd.services.images.v1 import images_pb2
from imaged.pb.containerd.types import descriptor_pb2


class ImageStore:
    def __init__(self, ns: Namespaced) -> None:
        self.ns = ns

    async def list(self, *filters: str) -> list[images_pb2.Image]:
        resp = await self.ns.call(self.ns.images.List, images_pb2.ListImagesRequest(filters=list(filters)))
        return list(resp.images)

    async def get(self, name: str) -> images_pb2.Image | None:
        try:
            resp = await self.ns.call(self.ns.images.Get, images_pb2.GetImageRequest(name=name))
        except errors.NotFound:
            return None
        return resp.image

    async def put(self, name: str, target: descriptor_pb2.Descriptor, labels: dict[str, str]) -> bool:
        """Create the record, or point an existing one at `target` with these labels; return
        whether it was created (a caller undoing its work must not delete what it only updated).

        A label given with an empty value is removed from an existing record (and not set on a new one).
        """
        image = images_pb2.Image(name=name, target=target, labels=L.fit_all(labels))
        try:
            await self.ns.call(self.ns.images.Create, images_pb2.CreateImageRequest(image=image))
            return True
        except errors.AlreadyExists:
            pass
        mask = field_mask_pb2.FieldMask(paths=["target", *(f"labels.{k}" for k in labels)])
        await self.ns.call(
            self.ns.images.Update, images_pb2.UpdateImageRequest(image=image, update_mask=mask)
        )
        return False

    async def delete(self, name: str, *, sync: bool = True) -> None:
        await self.ns.call(self.ns.images.Delete, images_pb2.DeleteImageRequest(name=name, sync=sync))
