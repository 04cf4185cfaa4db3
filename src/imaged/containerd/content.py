"""The content store: read blobs, set labels, and write blobs with containerd's ingest refs.

Writes use the ref names containerd's own clients use (`layer-sha256:...`), so a blob being
fetched by ctr, CRI or another imaged call is written once: a second writer finds the ref
locked, waits, and then finds the blob present. `write_blob` and `copy` are the one way Pull and
Import write a blob (containerd's Go `content.WriteBlob` and `content.Copy` are the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal

import grpc
from google.protobuf import field_mask_pb2

from imaged import errors
from imaged.containerd import leases
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
    created_at: float = 0.0  # seconds since the epoch, as containerd stamped the commit


class ContentStore:
    def __init__(self, ns: Namespaced) -> None:
        self.ns = ns

    async def info(self, digest: str) -> Info | None:
        try:
            resp = await self.ns.call(self.ns.content.Info, content_pb2.InfoRequest(digest=digest))
        except errors.NotFound:
            return None
        i = resp.info
        created = i.created_at.seconds + i.created_at.nanos / 1e9
        return Info(i.digest, i.size, dict(i.labels), created)

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

    async def discard(self, ref: str) -> None:
        """Abort an ingest of ours; best effort, and never in place of the error that got us here.

        Right after the write stream is cancelled containerd's handler may still be touching the
        ingest directory ("directory not empty"), so a failed abort is retried for a while.
        """
        delay = 0.02
        for attempt in range(12):
            try:
                await self.abort(ref)
                return
            except errors.ImagedError as e:
                if attempt == 11:
                    log.warning("could not abort ingest %s: %s", ref, e.message)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

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
            ) from e
        if self.expected and resp.digest != self.expected:
            await self.close()
            await finish(self.store.abort(self.ref))
            raise errors.DataLoss(f"content {self.ref}: expected digest {self.expected}, got {resp.digest}")
        return str(resp.digest)

    async def close(self) -> None:
        if not self._call.done():
            self._call.cancel()


# What a blob is to an image, as its ingest ref says (`layer-sha256:...`).
BlobKind = Literal["index", "manifest", "config", "layer"]


def ingest_ref(kind: BlobKind, digest: str) -> str:
    """The ref containerd's own clients write a blob under (its remotes.MakeRefKey), so that
    concurrent writers of one blob, whoever they are, wait for each other and write it once."""
    return f"{kind}-{digest}"


# A blob's bytes, in one of three forms: held in memory; a one-shot stream (a tar member), read
# to its end in every case; or opened from a byte offset, so that an ingest left part-way is
# resumed there (a registry's `Range`) instead of written again from byte 0.
Source = bytes | AsyncIterable[bytes] | Callable[[int], AsyncIterable[bytes]]

# What `copy` did: "present", found on opening (nothing sent); "written", created by its commit;
# "existed", its commit found the blob present (another writer committed it meanwhile; labels
# set, and held if asked); "collected", as "existed", but gone again before it could be held:
# held bytes are for the caller to write again.
Written = Literal["present", "written", "existed", "collected"]


async def write_blob(
    store: ContentStore,
    ref: str,
    source: Source,
    *,
    size: int,
    digest: str,
    labels: Mapping[str, str] | None = None,
    lock_wait: Callable[[], None] | None = None,
    on_write: Callable[[int], None] | None = None,
    turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> Written:
    """Open the ingest `ref` (waiting while another writer holds it) and `copy` `source` into it."""
    w = await store.open_writer(ref, total=size, expected=digest, lock_wait=lock_wait)
    return await copy(store, w, source, size=size, digest=digest, labels=labels, on_write=on_write, turn=turn)


async def copy(
    store: ContentStore,
    w: Writer | None,
    source: Source,
    *,
    size: int,
    digest: str,
    labels: Mapping[str, str] | None = None,
    hold: bool = False,
    abort: bool = False,
    seal: Callable[[], str] | None = None,
    on_write: Callable[[int], None] | None = None,
    turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> Written:
    """Write `source` (`size` bytes, digest `digest` when known) through `w` and commit it with
    `labels`; `w` is None when opening found the blob present, which then only gets the labels.

    Where the ingest holds bytes already: all of them (another namespace has the blob, or a writer
    stopped just short of its commit), the commit alone; a part, resumed from there for a source
    opened at an offset, else started again from byte 0. A failure leaves the ingest for the next
    writer to resume, with the bytes of a resumable source received so far flushed into it (a
    digest mismatch aborts it: see `Writer.commit`); with `abort`, for a ref of the caller's own
    that nobody resumes, it aborts the ingest.

    `hold`: also put the blob in the lease of `store.ns` where containerd does not, i.e. when a
    commit finds it present: a stream is held before its commit (its bytes cannot be sent again),
    bytes after such a commit, which otherwise costs a metadata write per blob. `seal`: for a
    stream whose digest is known only at its end, called after the last byte and before the
    commit, returns the digest to commit under (it may refuse by raising). `on_write`: the
    ingest's offset once positioned and after each write. `turn`: a gate every write waits for.
    """
    labels = dict(labels or {})
    if w is None:
        await _drain(source)
        await store.update_labels(digest, labels)
        return "present"
    try:
        await _position_and_write(w, source, size, on_write, turn)
        if seal is not None:
            w.expected = seal()
        if hold and not isinstance(source, bytes):
            await leases.hold(store.ns, w.expected)
        await w.commit(labels)
    except BaseException as e:
        if abort:
            await w.close()
            await finish(store.discard(w.ref))
        elif callable(source) and isinstance(e, errors.ImagedError) and not isinstance(e, errors.DataLoss):
            # Keep every byte received in the ingest, so the next writer resumes right there.
            with contextlib.suppress(errors.ImagedError):
                await w.flush()
        raise
    finally:
        await w.close()
    if not w.existed:
        return "written"
    if (
        hold
        and isinstance(source, bytes)
        and not await leases.hold_if_present(store.ns, w.expected, lambda: store.exists(w.expected))
    ):
        return "collected"
    await store.update_labels(w.expected, labels)  # the commit that found it set none
    return "existed"


async def _position_and_write(
    w: Writer,
    source: Source,
    size: int,
    on_write: Callable[[int], None] | None,
    turn: Callable[[], AbstractAsyncContextManager[None]] | None,
) -> None:
    complete = bool(w.expected) and w.offset == size
    resumable = callable(source) and w.offset < size
    if w.offset and not complete and not resumable:
        await w.restart()
    if on_write is not None:
        on_write(w.offset)
    if complete:
        await _drain(source)
        return
    if isinstance(source, bytes):
        chunks: AsyncIterable[bytes] = _once(source)
    elif callable(source):
        chunks = source(w.offset)
    else:
        chunks = source
    async for chunk in chunks:
        if turn is None:
            await w.write(chunk)
        else:
            async with turn():
                await w.write(chunk)
        if on_write is not None:
            on_write(w.offset)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _drain(source: Source) -> None:
    """Read a one-shot stream to its end (its reader may be hashing it, or reading a tar)."""
    if not isinstance(source, bytes) and not callable(source):
        async for _ in source:
            pass
