"""Connection to one containerd socket, namespaced views and error translation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from imaged import errors
from imaged.pb.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from imaged.pb.containerd.services.diff.v1 import diff_pb2_grpc
from imaged.pb.containerd.services.images.v1 import images_pb2_grpc
from imaged.pb.containerd.services.introspection.v1 import introspection_pb2_grpc
from imaged.pb.containerd.services.leases.v1 import leases_pb2_grpc
from imaged.pb.containerd.services.namespaces.v1 import namespace_pb2_grpc
from imaged.pb.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from imaged.pb.containerd.services.version.v1 import version_pb2_grpc
from imaged.pb.runtime.v1 import api_pb2_grpc as cri_pb2_grpc

T = TypeVar("T")

# containerd accepts 16 MiB messages; an Images.List of thousands of records needs more than 4 MB.
MAX_MESSAGE = 64 * 1024 * 1024


def _pass_bytes(message: Any) -> bytes:
    """Serializer that lets pre-encoded messages through (see `content.write_message`)."""
    return message if isinstance(message, bytes) else message.SerializeToString()  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _Stubs:
    """The service stubs of one channel, built once: views (a lease, a namespace) only change metadata."""

    images: images_pb2_grpc.ImagesStub
    content: content_pb2_grpc.ContentStub
    leases: leases_pb2_grpc.LeasesStub
    snapshots: snapshots_pb2_grpc.SnapshotsStub
    diff: diff_pb2_grpc.DiffStub
    namespaces: namespace_pb2_grpc.NamespacesStub
    introspection: introspection_pb2_grpc.IntrospectionStub
    # containerd's CRI plugin's image service (runtime.v1), on the same socket.
    cri_images: cri_pb2_grpc.ImageServiceStub
    # Content.Write taking either a WriteContentRequest or its encoding as bytes.
    content_write: grpc.aio.StreamStreamMultiCallable

    @classmethod
    def on(cls, ch: grpc.aio.Channel) -> _Stubs:
        return cls(
            images_pb2_grpc.ImagesStub(ch),
            content_pb2_grpc.ContentStub(ch),
            leases_pb2_grpc.LeasesStub(ch),
            snapshots_pb2_grpc.SnapshotsStub(ch),
            diff_pb2_grpc.DiffStub(ch),
            namespace_pb2_grpc.NamespacesStub(ch),
            introspection_pb2_grpc.IntrospectionStub(ch),
            cri_pb2_grpc.ImageServiceStub(ch),
            ch.stream_stream(
                "/containerd.services.content.v1.Content/Write",
                request_serializer=_pass_bytes,
                response_deserializer=content_pb2.WriteContentResponse.FromString,
            ),
        )


class Containerd:
    """One containerd endpoint. The channel is created lazily and survives containerd restarts."""

    def __init__(self, address: str, *, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None
        # (namespace, lease id) whose deletion failed while containerd was away; retried on return.
        self.orphan_leases: set[tuple[str, str]] = set()

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix:{self.address}",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                    # Reconnect quickly after containerd comes back.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.min_reconnect_backoff_ms", 100),
                ],
            )
        return self._channel

    @property
    def stubs(self) -> _Stubs:
        if self._stubs is None or self._channel is None:
            self._stubs = _Stubs.on(self.channel)
        return self._stubs

    def ns(self, namespace: str) -> Namespaced:
        return Namespaced(self, namespace)

    async def version(self) -> str:
        stub = version_pb2_grpc.VersionStub(self.channel)
        resp = await self.call(stub.Version(empty_pb2.Empty(), timeout=self.connect_timeout))
        return str(resp.version)

    async def healthy(self) -> bool:
        try:
            await self.version()
        except errors.ImagedError:
            return False
        return True

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stubs = None

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await a containerd RPC, translating its failure into a domain error."""
        try:
            return await awaitable
        except grpc.aio.AioRpcError as e:
            raise self.translate(e) from None

    def translate(self, e: grpc.aio.AioRpcError) -> errors.ImagedError:
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and "locked" not in details:
            return errors.Unavailable(f"containerd at {self.address} is unavailable: {details}")
        if code == grpc.StatusCode.INTERNAL and "from Core" in details:
            # grpc's own error for a stream whose connection died under it (containerd went away).
            return errors.Unavailable(f"containerd at {self.address} went away during the call: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.Unavailable(f"containerd at {self.address} did not answer in time: {details}")
        if code == grpc.StatusCode.ABORTED:
            # containerd's word for a conflict with a concurrent change: worth another try.
            return errors.Unavailable(f"containerd at {self.address} aborted the call (try again): {details}")
        if code == grpc.StatusCode.CANCELLED:
            return errors.ImagedError(f"containerd call cancelled: {details}")
        return errors.from_code(code, f"containerd: {details}")


class Namespaced:
    """Stubs and metadata for one containerd namespace (and optionally one lease)."""

    def __init__(self, cd: Containerd, namespace: str, lease: str | None = None) -> None:
        self.cd = cd
        self.namespace = namespace
        self.lease = lease
        md: list[tuple[str, str]] = [("containerd-namespace", namespace)]
        if lease:
            md.append(("containerd-lease", lease))
        self.metadata = tuple(md)
        s = cd.stubs
        self.images = s.images
        self.content = s.content
        self.leases = s.leases
        self.snapshots = s.snapshots
        self.diff = s.diff
        self.namespaces = s.namespaces
        self.introspection = s.introspection
        self.cri_images = s.cri_images
        self.content_write = s.content_write

    def with_lease(self, lease: str | None) -> Namespaced:
        return Namespaced(self.cd, self.namespace, lease)

    async def call(self, method: Callable[..., Awaitable[T]], request: Any, **kw: Any) -> T:
        return await self.cd.call(method(request, metadata=self.metadata, **kw))

    async def stream(self, method: Callable[..., Any], request: Any, **kw: Any) -> AsyncIterator[Any]:
        """Iterate a server-streaming RPC with error translation."""
        call = method(request, metadata=self.metadata, **kw)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            raise self.cd.translate(e) from None
        finally:
            call.cancel()
