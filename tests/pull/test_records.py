"""Image records on real containerd: creating an image's three records is all or nothing for the
records a call creates (containerd has no transaction over several), and a record that existed
before is never removed by an undo."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from imaged import errors
from imaged.containerd.client import Containerd
from imaged.containerd.images import ImageStore, Target
from imaged.images.records import create_records, record_names
from imaged.registry.reference import parse
from tests.support.containerd import PrivateContainerd

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True

TARGET = Target("application/vnd.oci.image.manifest.v1+json", "sha256:" + "ab" * 32, 1234)
CONFIG = "sha256:" + "cd" * 32


def _failing_after(n: int, exc: BaseException) -> Any:
    """ImageStore.put that does the real write `n` times, then raises `exc` (a failure or a cancel
    arriving between two records)."""
    real = ImageStore.put
    calls = 0

    async def put(self: ImageStore, *args: Any, **kw: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls > n:
            raise exc
        return await real(self, *args, **kw)

    return put


async def _names(store: ImageStore) -> set[str]:
    return {i.name for i in await store.list()}


@pytest.mark.parametrize("exc", [errors.Unavailable("containerd went away"), asyncio.CancelledError()])
def test_a_failure_part_way_leaves_no_record(
    containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns(f"records-{os.getpid()}-{type(exc).__name__}")
        store = ImageStore(ns)
        ref = parse("registry.example/app:v1")
        try:
            monkeypatch.setattr(ImageStore, "put", _failing_after(2, exc))
            with pytest.raises(type(exc)):
                await create_records(ns, ref, TARGET, CONFIG)
            monkeypatch.undo()
            assert await _names(store) == set(), "the id and repo-digest records must be undone"
            # The same call succeeding afterwards creates all three.
            names = await create_records(ns, ref, TARGET, CONFIG)
            assert (
                await _names(store)
                == set(names)
                == set(record_names(ref, TARGET.digest, CONFIG, ns.namespace))
            )
        finally:
            await cd.close()

    asyncio.run(scenario())


def test_an_undo_keeps_records_that_existed_before(
    containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns(f"records-keep-{os.getpid()}")
        store = ImageStore(ns)
        try:
            # Another tag of the same image made its id and repo-digest records earlier.
            before = await create_records(ns, parse("registry.example/app:v1"), TARGET, CONFIG)
            monkeypatch.setattr(ImageStore, "put", _failing_after(2, errors.Unavailable("gone")))
            with pytest.raises(errors.Unavailable):
                await create_records(ns, parse("registry.example/app:v2"), TARGET, CONFIG)
            monkeypatch.undo()
            assert await _names(store) == set(before)
        finally:
            await cd.close()

    asyncio.run(scenario())


def test_an_undo_keeps_records_another_pull_updated_meanwhile(
    containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pulls of one image: A creates the id record, B updates it (its own pull's record now),
    then A fails on its next record. A's undo must leave what B relies on."""

    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns(f"records-race-{os.getpid()}")
        store = ImageStore(ns)
        ref = parse("registry.example/app:v1")
        real = ImageStore.put
        calls = 0

        async def put(self: ImageStore, name: str, *args: Any, **kw: Any) -> bool:
            nonlocal calls
            calls += 1
            if calls == 2:  # between A's first record and its second, B writes them all
                monkeypatch.setattr(ImageStore, "put", real)
                await create_records(ns, ref, TARGET, CONFIG)
                raise errors.Unavailable("containerd went away")
            return await real(self, name, *args, **kw)

        try:
            monkeypatch.setattr(ImageStore, "put", put)
            with pytest.raises(errors.Unavailable):
                await create_records(ns, ref, TARGET, CONFIG)
            monkeypatch.undo()
            assert await _names(store) == set(record_names(ref, TARGET.digest, CONFIG, ns.namespace))
        finally:
            await cd.close()

    asyncio.run(scenario())
