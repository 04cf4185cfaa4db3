"""CRI's runtime.v1.ImageService on the `listen.cri` socket (the kubelet's imageServiceEndpoint)."""

from __future__ import annotations

import grpc

from imaged.pb.runtime.v1 import api_pb2, api_pb2_grpc
from imaged.service.runtime import Runtime
from imaged.service.status import unary


class CriImageService(api_pb2_grpc.ImageServiceServicer):
    """Always on containerd's CRI namespace (k8s.io) of the `cri_socket` containerd."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    @unary
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListImagesResponse:
        return await self.rt.cri_images.list_images(request)

    @unary
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageStatusResponse:
        return await self.rt.cri_images.status(request)

    @unary
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PullImageResponse:
        return api_pb2.PullImageResponse(image_ref=await self.rt.cri_images.pull(request))

    @unary
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemoveImageResponse:
        await self.rt.cri_images.remove(request)
        return api_pb2.RemoveImageResponse()

    @unary
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageFsInfoResponse:
        return await self.rt.cri_images.fs_info()
