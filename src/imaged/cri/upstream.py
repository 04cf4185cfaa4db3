"""containerd's own CRI image service (runtime.v1.ImageService on containerd's socket).

Answers are passed on as containerd gives them: the kubelet must see what containerd's CRI would
have told it, so an error keeps containerd's code and words (`CriError`), except that containerd
being unreachable is reported as for every other containerd call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.pb.runtime.v1 import api_pb2

T = TypeVar("T")

# containerd unreachable or too slow: said as for any containerd call. Everything else is the CRI's
# own answer (UNIMPLEMENTED from a containerd without the CRI plugin, too).
_CONNECTION = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CriError(errors.ImagedError):
    """An answer of containerd's CRI, with its own status code (often UNKNOWN)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def call(ns: Namespaced, method: Callable[..., Awaitable[T]], request: Any, **kw: Any) -> T:
    """One call with `ns`'s metadata (its lease too: containerd's pull then works under it)."""
    try:
        return await method(request, metadata=ns.metadata, **kw)
    except grpc.aio.AioRpcError as e:
        code = e.code()
        if code in _CONNECTION or (code == grpc.StatusCode.INTERNAL and "from Core" in (e.details() or "")):
            raise ns.cd.translate(e) from None
        raise CriError(code, e.details() or code.name) from None


async def pull(ns: Namespaced, request: api_pb2.PullImageRequest) -> str:
    resp = await call(ns, ns.cri_images.PullImage, request)
    return str(resp.image_ref)


async def status(ns: Namespaced, request: api_pb2.ImageStatusRequest) -> api_pb2.ImageStatusResponse:
    return await call(ns, ns.cri_images.ImageStatus, request)


async def list_images(ns: Namespaced, request: api_pb2.ListImagesRequest) -> api_pb2.ListImagesResponse:
    return await call(ns, ns.cri_images.ListImages, request)


async def remove(ns: Namespaced, request: api_pb2.RemoveImageRequest) -> None:
    await call(ns, ns.cri_images.RemoveImage, request)


async def fs_info(ns: Namespaced) -> api_pb2.ImageFsInfoResponse:
    return await call(ns, ns.cri_images.ImageFsInfo, api_pb2.ImageFsInfoRequest())


async def knows(ns: Namespaced, name: str, image_id: str) -> bool:
    """Whether containerd's CRI finds `name` and takes it for image `image_id`."""
    resp = await status(ns, api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name)))
    return (
        resp.HasField("image")
        and resp.image.id == image_id
        and (name == image_id or name in resp.image.repo_tags or name in resp.image.repo_digests)
    )
