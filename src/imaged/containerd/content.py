"""The content store: read blobs, set labels, and write blobs with containerd's ingest refs.

Writes use the ref names containerd's own clients use (`layer-sha256:...`), so a blob being
fetched by ctr, CRI or another imaged call is written once: a second writer finds the ref
locked, waits, and then finds the blob present.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import field_mask_pb2

from imaged import errors
from imaged.containerd.client import Namespaced
from imaged.containerd.leases import finish
from imaged.pb.containerd.services.content.v1 import content_pb2

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# WRITE requests sent ahead of their acknowledgements (bounded memory, fewer round trips).
WINDOW = 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_message(ref: str, offset: int, pieces: list[bytes], size: int) -> bytes:
    """The encoding of `WriteContentRequest(action=WRITE, ref, offset, data=b"".join(pieces))`.

    Built by hand so that the data is copied once, from the received pieces straight into the
    message, instead of joined, copied into a protobuf object and serialized (three copies of
    every pulled byte). Field numbers: action 1, ref 2, offset 5, data 6 (containerd's content.proto).
    """
    r = ref.encode()
    return b"".join(
        [b"\x08\x01\x12", _varint(len(r)), r, b"\x28", _varint(offset), b"\x32", _varint(size), *pieces]
    )


@dataclass(frozen=True, slots=True)
class Info:
    digest: str
    size: int
    labels: dict[str, str]


class ContentStore:
    def __init__(self, ns: Namespaced) -> None:
        self.ns = ns

    async def info(self, digest: str) -> Info | None:
        try:
            resp = await self.ns.call(self.ns.content.Info, content_pb2.InfoRequest(digest=digest))
        except errors.NotFound:
            return None
        return Info(resp.info.digest, resp.info.size, dict(resp.info.labels))

    async def exists(self, digest: str) -> bool:
        return await self.info(digest) is not None

    async def update_labels(self, digest: str, labels: dict[str, str]) -> None:
        """Set (or with an empty value, remove) only the given label keys."""
        if not labels:
            return
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])
        info = content_pb2.Info(digest=digest, labels={k: v for k, v in labels.items() if v})
        await self.ns.call(self.ns.content.Update, content_pb2.UpdateRequest(info=info, update_mask=mask))

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        req = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        async for resp in self.ns.stream(self.ns.content.Read, req):
            yield resp.data

    async def read_all(self, digest: str, limit: int) -> bytes:
        """A whole blob, refusing one larger than `limit` before reading it."""
        info = await self.info(digest)
        if info is None:
            raise errors.NotFound(f"content {digest} not found")
        if info.size > limit:
            raise errors.ResourceExhausted(f"content {digest} is {info.size} bytes, over the {limit} limit")
        buf = bytearray()
        async for chunk in self.read(digest):
            buf += chunk
        return bytes(buf)

    async def statuses(self, *filters: str) -> list[content_pb2.Status]:
        resp = await self.ns.call(
            self.ns.content.ListStatuses, content_pb2.ListStatusesRequest(filters=list(filters))
        )
        return list(resp.statuses)

    async def abort(self, ref: str) -> None:
        try:
            await self.ns.call(self.ns.content.Abort, content_pb2.AbortRequest(ref=ref))
        except errors.NotFound:
            pass

    async def delete(self, digest: str) -> None:
        try:
            await self.ns.call(self.ns.content.Delete, content_pb2.DeleteContentRequest(digest=digest))
        except errors.NotFound:
            pass

    async def open_writer(
        self,
        ref: str,
        *,
        total: int = 0,
        expected: str = "",
        lock_wait: Callable[[], None] | None = None,
    ) -> Writer | None:
        """A writer positioned where the ingest left off, or None if the blob already exists.

        A ref locked by another writer is waited on (`lock_wait` is called once when that starts).
        """
        delay, waited = 0.05, False
        while True:
            w = Writer(self, ref, total, expected)
            try:
                await w.stat()
                return w
            except errors.AlreadyExists:
                await w.close()
                return None
            except errors.Unavailable as e:
                await w.close()
                if "locked" not in e.message:
                    raise
                if not waited and lock_wait is not None:
                    lock_wait()
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except BaseException:
                await w.close()
                raise


class Writer:
    """One Content.Write stream: STAT, WRITE..., COMMIT. Offsets are tracked here.

    Small writes are coalesced into messages of about CHUNK bytes: a registry or a tar stream
    hands out pieces of tens of KiB, and one message (and acknowledgement) per piece costs more
    CPU than the copy, which `write_message` makes the only one. `offset` counts bytes accepted;
    what is still buffered is sent by `flush`, or on the COMMIT message by `commit`.
    """

    def __init__(self, store: ContentStore, ref: str, total: int, expected: str) -> None:
        self.store = store
        self.ref = ref
        self.total = total
        self.expected = expected
        self.offset = 0
        # Set by commit when containerd already had the blob: then the commit neither put it in
        # the writer's lease nor set the labels (a commit that creates the blob does both).
        self.existed = False
        self._pending = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        ns = store.ns
        self._call = ns.content_write(metadata=ns.metadata)

    async def _send(self, req: content_pb2.WriteContentRequest | bytes) -> None:
        try:
            await self._call.write(req)
        except grpc.aio.AioRpcError as e:
            raise self.store.ns.cd.translate(e) from None
        except asyncio.InvalidStateError:
            # The server ended the stream (an error response is waiting to be read).
            await self._recv()
            raise errors.Internal(f"containerd closed the write stream for {self.ref}") from None
        self._pending += 1

    async def _recv(self) -> content_pb2.WriteContentResponse:
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise self.store.ns.cd.translate(e) from None
        if resp is grpc.aio.EOF:
            code = await self._call.code()
            details = await self._call.details()
            raise errors.from_code(code, f"containerd: {details}")
        self._pending -= 1
        return resp

    async def _drain(self, keep: int = 0) -> None:
        while self._pending > keep:
            await self._recv()

    async def stat(self) -> None:
        await self._send(
            content_pb2.WriteContentRequest(
                action=content_pb2.STAT, ref=self.ref, total=self.total, expected=self.expected
            )
        )
        resp = await self._recv()
        self.offset = resp.offset
        if resp.total:
            self.total = self.total or resp.total

    async def restart(self) -> None:
        """Discard what the ingest holds and start from byte 0 (WRITE at offset 0 truncates)."""
        self.offset = 0
        self._buf = []
        self._buffered = 0

    async def _send_buffered(self) -> None:
        start = self.offset - self._buffered
        await self._send(write_message(self.ref, start, self._buf, self._buffered))
        self._buf = []
        self._buffered = 0
        await self._drain(WINDOW)

    async def write(self, data: bytes) -> None:
        """Accept `data`; a message goes out as soon as about CHUNK bytes are buffered."""
        if len(data) > CHUNK:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                await self.write(view[i : i + CHUNK])  # type: ignore[arg-type]
            return
        self._buf.append(data)
        self._buffered += len(data)
        self.offset += len(data)
        if self._buffered >= CHUNK:
            await self._send_buffered()

    async def flush(self) -> None:
        if self._buffered:
            await self._send_buffered()

    async def commit(self, labels: dict[str, str] | None = None) -> str:
        """Commit; return the digest. A digest mismatch aborts the ingest and raises DataLoss.

        What is still buffered rides on the COMMIT message (containerd writes a COMMIT's data
        first), so a small blob costs one message and one answer fewer.
        """
        tail = b"".join(self._buf) if self._buffered else b""
        start = self.offset - len(tail)
        self._buf = []
        self._buffered = 0
        await self._drain()
        await self._send(
            content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT,
                ref=self.ref,
                offset=start,
                data=tail,
                total=self.total or self.offset,
                expected=self.expected,
                labels=labels or {},
            )
        )
        try:
            resp = await self._recv()
        except errors.AlreadyExists:
            self.existed = True
            if not self.expected:
                # containerd does not say which digest exists; callers that hash the bytes set it.
                raise errors.AlreadyExists(
                    f"content written as {self.ref} already exists; its digest was not given to the writer"
                ) from None
            return self.expected
        except errors.FailedPrecondition as e:
            await self.close()
            await finish(self.store.abort(self.ref))
            raise errors.DataLoss(
                f"content {self.expected or self.ref} failed verification: {e.message}"
            ) from None
        if self.expected and resp.digest != self.expected:
            await self.close()
            await finish(self.store.abort(self.ref))
            raise errors.DataLoss(f"content {self.ref}: expected digest {self.expected}, got {resp.digest}")
        return str(resp.digest)

    async def close(self) -> None:
        if not self._call.done():
            self._call.cancel()
