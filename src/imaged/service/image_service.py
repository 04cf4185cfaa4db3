"""machine.ImageService: request decoding and response encoding around the domain calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from imaged import errors
from imaged.daemon.runtime import Runtime
from imaged.images.listing import list_images
from imaged.images.remove import remove_image
from imaged.pb.machine import image_pb2, image_pb2_grpc
from imaged.service.status import streaming, unary


class ImageService(image_pb2_grpc.ImageServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @streaming
    async def List(  # noqa: N802 - gRPC method name
        self, request: image_pb2.ImageServiceListRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[image_pb2.ImageServiceListResponse]:
        ns = self.rt.namespaced(request.containerd)
        async for item in list_images(ns, self.rt.size_cache):
            img = item.image
            resp = image_pb2.ImageServiceListResponse(
                name=img.name, digest=img.target.digest, size=item.size, labels=dict(img.labels)
            )
            resp.created_at.CopyFrom(img.created_at)
            yield resp

    @unary
    async def Remove(  # noqa: N802
        self, request: image_pb2.ImageServiceRemoveRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        ns = self.rt.namespaced(request.containerd)
        await remove_image(ns, request.image_ref)
        return empty_pb2.Empty()

    @streaming
    async def Pull(  # noqa: N802
        self, request: image_pb2.ImageServicePullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[image_pb2.ImageServicePullResponse]:
        self.rt.namespaced(request.containerd)
        raise errors.Unimplemented("Pull is not implemented yet")
        yield  # pragma: no cover

    @unary
    async def Import(  # noqa: N802
        self,
        request_iterator: AsyncIterator[image_pb2.ImageServiceImportRequest],
        context: grpc.aio.ServicerContext,
    ) -> image_pb2.ImageServiceImportResponse:
        raise errors.Unimplemented("Import is not implemented yet")

    @unary
    async def Verify(  # noqa: N802
        self, request: image_pb2.ImageServiceVerifyRequest, context: grpc.aio.ServicerContext
    ) -> image_pb2.ImageServiceVerifyResponse:
        raise errors.Unimplemented("Verify is not implemented yet")
