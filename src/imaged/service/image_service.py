"""machine.ImageService: request decoding and response encoding around the domain calls."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from imaged import errors
from imaged.archive.importer import import_archive
from imaged.images.listing import list_images
from imaged.images.remove import remove_image
from imaged.pb.machine import image_pb2, image_pb2_grpc
from imaged.pull.progress import LayerState, Progress
from imaged.registry.auth import HostLogin
from imaged.registry.reference import MAX_REFERENCE
from imaged.service.runtime import Runtime
from imaged.service.status import streaming, unary

MAX_CREDENTIAL = 64 * 1024  # a password may be a long token, not megabytes


def progress_message(state: LayerState) -> image_pb2.ImageServicePullResponse:
    layer = image_pb2.ImageServicePullLayerProgress(
        status=state.status.name,
        offset=state.offset,
        total=state.total,  # type: ignore[arg-type]
    )
    if state.elapsed:
        layer.elapsed.FromTimedelta(dt.timedelta(seconds=state.elapsed))
    return image_pb2.ImageServicePullResponse(
        pull_progress=image_pb2.ImageServicePullProgress(layer_id=state.layer_id, progress=layer)
    )


class UndecodableImport:
    """An Import message that does not parse as `machine.ImageServiceImportRequest`.

    grpc would answer INTERNAL for a request its deserializer cannot read; Import's deserializer
    hands this on instead, so that the handler can say what is wrong. An archive chunk in
    `common.Data` field 1 (where an old imagectl put it; Talos's Data has `metadata` = 1 and
    `bytes` = 2) is the usual cause: tar bytes do not parse as a Metadata message.
    """

    def __init__(self, error: str) -> None:
        self.error = error


ImportMessage = image_pb2.ImageServiceImportRequest | UndecodableImport

WRONG_CHUNK_FIELD = (
    "Import chunk is not a common.Data with the archive bytes in field 2 (`bytes`), as Talos defines it: "
    "this client put them in field 1 (`metadata`), as imagectl before 0.2 did; upgrade the client"
)


def decode_import_request(data: bytes) -> ImportMessage:
    try:
        return image_pb2.ImageServiceImportRequest.FromString(data)
    except DecodeError as e:
        return UndecodableImport(str(e))


def _chunk(msg: ImportMessage) -> bytes:
    """The archive bytes of an Import message after the first, or INVALID_ARGUMENT saying why not."""
    if isinstance(msg, UndecodableImport):
        raise errors.InvalidArgument(WRONG_CHUNK_FIELD)
    if msg.WhichOneof("request") != "image_chunk":
        raise errors.InvalidArgument("every Import message after the first must be an image_chunk")
    if msg.image_chunk.HasField("metadata"):
        raise errors.InvalidArgument(WRONG_CHUNK_FIELD)
    return msg.image_chunk.bytes


def add_image_service(servicer: image_pb2_grpc.ImageServiceServicer, server: grpc.aio.Server) -> None:
    """The generated registration, but with Import's lenient deserializer (see UndecodableImport)."""
    pb = image_pb2
    handlers = {
        "List": grpc.unary_stream_rpc_method_handler(
            servicer.List,
            request_deserializer=pb.ImageServiceListRequest.FromString,
            response_serializer=pb.ImageServiceListResponse.SerializeToString,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=pb.ImageServicePullRequest.FromString,
            response_serializer=pb.ImageServicePullResponse.SerializeToString,
        ),
        "Import": grpc.stream_unary_rpc_method_handler(
            servicer.Import,
            request_deserializer=decode_import_request,
            response_serializer=pb.ImageServiceImportResponse.SerializeToString,
        ),
        "Remove": grpc.unary_unary_rpc_method_handler(
            servicer.Remove,
            request_deserializer=pb.ImageServiceRemoveRequest.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        ),
        "Verify": grpc.unary_unary_rpc_method_handler(
            servicer.Verify,
            request_deserializer=pb.ImageServiceVerifyRequest.FromString,
            response_serializer=pb.ImageServiceVerifyResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["ImageService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def image_ref(request: Any) -> str:
    """The request's image reference, refused (INVALID_ARGUMENT) before anything else reads it
    when it is longer than any reference can be: a client may send megabytes of it."""
    ref: str = request.image_ref
    if len(ref) > MAX_REFERENCE:
        raise errors.InvalidArgument(
            f"invalid image reference: {len(ref)} characters, longer than {MAX_REFERENCE} characters"
        )
    return ref


def _bounded_credentials(c: image_pb2.ImageServiceCredentials) -> None:
    if len(c.host) > MAX_REFERENCE or len(c.username) > MAX_CREDENTIAL or len(c.password) > MAX_CREDENTIAL:
        raise errors.InvalidArgument(
            f"credentials are too long: host at most {MAX_REFERENCE} characters, user name and "
            f"password at most {MAX_CREDENTIAL}"
        )


class ImageService(image_pb2_grpc.ImageServiceServicer):
    """`readonly` serves List and Verify only (the role of a socket for CRI and readers);
    `configured_credentials`: whether Verify may use the configured registry credentials (else
    only those in the request: the socket's `credentials` setting)."""

    def __init__(self, rt: Runtime, *, readonly: bool = False, configured_credentials: bool = True) -> None:
        self.rt = rt
        self.readonly = readonly
        self.configured_credentials = configured_credentials

    def _writable(self, method: str) -> None:
        if self.readonly:
            raise errors.PermissionDenied(
                f"{method} is not allowed on the read-only socket; use the admin socket"
            )

    @streaming
    async def List(
        self, request: image_pb2.ImageServiceListRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[image_pb2.ImageServiceListResponse]:
        ns = self.rt.namespaced(request.containerd)
        async for item in list_images(ns, self.rt.size_cache):
            img = item.image
            resp = image_pb2.ImageServiceListResponse(
                name=img.name, digest=img.target.digest, size=item.size, labels=dict(img.labels)
            )
            resp.created_at.FromNanoseconds(img.created_at)
            yield resp

    @unary
    async def Remove(
        self, request: image_pb2.ImageServiceRemoveRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        ref = image_ref(request)
        self._writable("Remove")
        ns = self.rt.namespaced(request.containerd)
        await remove_image(ns, ref)
        return empty_pb2.Empty()

    @streaming
    async def Pull(
        self, request: image_pb2.ImageServicePullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[image_pb2.ImageServicePullResponse]:
        ref = image_ref(request)
        self._writable("Pull")
        ns = self.rt.namespaced(request.containerd)
        progress = Progress(self.rt.config.pull.progress_rate)
        task = asyncio.create_task(self.rt.puller.pull(ns, ref, progress))
        task.add_done_callback(lambda _: progress.close())
        try:
            while (state := await progress.next()) is not None:
                yield progress_message(state)
            name = await task
            yield image_pb2.ImageServicePullResponse(name=name)
        finally:
            if not task.done():
                # The client went away: stop downloading; the lease is removed by the pull itself.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    @unary
    async def Import(
        self,
        request_iterator: AsyncIterator[ImportMessage],
        context: grpc.aio.ServicerContext,
    ) -> image_pb2.ImageServiceImportResponse:
        self._writable("Import")
        first = await anext(aiter(request_iterator), None)
        if isinstance(first, UndecodableImport):
            raise errors.InvalidArgument(f"Import request does not parse: {first.error}")
        if first is None or first.WhichOneof("request") != "containerd":
            raise errors.InvalidArgument("containerd instance is required as the first message of Import")
        ns = self.rt.namespaced(first.containerd)
        metrics = self.rt.metrics

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                data = _chunk(msg)
                metrics.imported_bytes.inc(len(data))
                yield data

        cfg = self.rt.config.containerd
        names = await import_archive(
            ns,
            chunks(),
            snapshotter=cfg.snapshotter,
            owner=self.rt.owner,
            lease_expire=dt.timedelta(seconds=cfg.lease_expire_seconds),
            policy=self.rt.import_policy,
        )
        return image_pb2.ImageServiceImportResponse(name=names[0])

    @unary
    async def Verify(
        self, request: image_pb2.ImageServiceVerifyRequest, context: grpc.aio.ServicerContext
    ) -> image_pb2.ImageServiceVerifyResponse:
        ref = image_ref(request)
        creds = None
        c = request.credentials
        _bounded_credentials(c)
        # An empty user name and password is no credential: it must not replace configured auth
        # for the host with an empty Basic header (a CRI pull without a pull secret may send it).
        if request.HasField("credentials") and c.host and (c.username or c.password):
            creds = HostLogin(c.host, c.username, c.password)
        verdict = await self.rt.counted(
            self.rt.verifier.verify(ref, creds, configured_credentials=self.configured_credentials)
        )
        return image_pb2.ImageServiceVerifyResponse(
            verified=verdict.verified,
            message=verdict.message,
            digested_image_ref=verdict.digested_ref if verdict.verified else "",
        )
