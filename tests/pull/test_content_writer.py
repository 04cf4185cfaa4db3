"""The content writer against a real containerd: hand-encoded WRITE messages, data riding on
COMMIT, resume and restart of an ingest."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from collections.abc import Awaitable, Callable

import pytest

from imaged import errors
from imaged.containerd.client import Containerd
from imaged.containerd.content import CHUNK, ContentStore, write_message
from imaged.containerd.leases import lease
from imaged.pb.containerd.services.content.v1 import content_pb2
from tests.support.containerd import PrivateContainerd


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 300, 2**21, 2**35 + 5])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 70_000])
def test_write_message_is_the_protobuf_encoding(offset: int, size: int) -> None:
    data = os.urandom(size)
    pieces = [data[: size // 3], data[size // 3 :]]
    ref = "layer-sha256:" + "ab" * 32
    expected = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=offset, data=data)
    encoded = write_message(ref, offset, pieces, size)
    assert content_pb2.WriteContentRequest.FromString(encoded) == expected


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _run(containerd: PrivateContainerd, body: Callable[[ContentStore], Awaitable[None]]) -> None:
    async def main() -> None:
        cd = Containerd(containerd.socket)
        try:
            # Leased: unreferenced content is otherwise collected by any GC that runs meanwhile.
            ns = cd.ns(f"writer-{os.getpid()}")
            async with lease(ns, owner="test", purpose="writer", expire=dt.timedelta(minutes=5)) as lns:
                await body(ContentStore(lns))
        finally:
            await cd.close()

    asyncio.run(main())


async def _leave_partial(store: ContentStore, ref: str, data: bytes, total: int, digest: str) -> None:
    """An ingest holding `data` (acknowledged by containerd), its writer gone: a cut-short write."""
    w = await store.open_writer(ref, total=total, expected=digest)
    assert w is not None
    await w.write(data)
    await w.flush()
    await w._drain()
    await w.close()


@pytest.mark.parametrize("piece", [1000, 64 * 1024, CHUNK - 1, 3 * CHUNK + 17])
def test_pieces_of_any_size_commit_the_same_blob(containerd: PrivateContainerd, piece: int) -> None:
    data = os.urandom(2 * CHUNK + 12345)
    digest = _digest(data)

    async def body(store: ContentStore) -> None:
        w = await store.open_writer(f"t-{digest}-{piece}", total=len(data), expected=digest)
        assert w is not None
        try:
            for i in range(0, len(data), piece):
                await w.write(data[i : i + piece])
            assert await w.commit({"k": "v"}) == digest
        finally:
            await w.close()
        assert await store.read_all(digest, len(data)) == data
        info = await store.info(digest)
        assert info is not None and info.labels == {"k": "v"}
        await store.delete(digest)

    _run(containerd, body)


def test_resume_an_ingest(containerd: PrivateContainerd) -> None:
    data = os.urandom(CHUNK + 5000)
    digest = _digest(data)
    ref = f"t-resume-{digest}"

    async def body(store: ContentStore) -> None:
        await _leave_partial(store, ref, data[:7000], len(data), digest)
        # Resume where the ingest left off; the rest (under CHUNK) rides on the COMMIT.
        w = await store.open_writer(ref, total=len(data), expected=digest)
        assert w is not None and w.offset == 7000
        await w.write(data[7000:])
        assert await w.commit() == digest
        await w.close()
        assert await store.read_all(digest, len(data)) == data
        await store.delete(digest)

    _run(containerd, body)


def test_restart_truncates_what_the_ingest_holds(containerd: PrivateContainerd) -> None:
    """Bytes already in the ingest are wrong; writing from 0 (data riding on COMMIT) replaces them."""
    data = os.urandom(CHUNK - 5000)
    digest = _digest(data)
    ref = f"t-restart-{digest}"

    async def body(store: ContentStore) -> None:
        await _leave_partial(store, ref, b"garbage" * 100, len(data), digest)
        w = await store.open_writer(ref, total=len(data), expected=digest)
        assert w is not None and w.offset == 700
        await w.restart()
        await w.write(data)
        assert await w.commit() == digest
        await w.close()
        assert await store.read_all(digest, len(data)) == data
        await store.delete(digest)

    _run(containerd, body)


def test_wrong_bytes_on_commit_are_data_loss_and_abort(containerd: PrivateContainerd) -> None:
    data = os.urandom(5000)
    digest = _digest(data)
    ref = f"t-bad-{digest}"

    async def body(store: ContentStore) -> None:
        w = await store.open_writer(ref, total=len(data), expected=digest)
        assert w is not None
        await w.write(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(errors.DataLoss):
            await w.commit()
        await w.close()
        assert await store.info(digest) is None
        assert not [s for s in await store.statuses() if s.ref == ref]

    _run(containerd, body)
