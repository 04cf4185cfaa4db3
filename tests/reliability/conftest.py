"""Fixtures of the reliability suite: one real registry per session, images made per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support import archives
from tests.support.registry import Registry

# Fast retries and short timeouts: faults must resolve in seconds, not minutes.
FAST_REGISTRIES = {
    "retries": {"attempts": 4, "base_delay": 0.05, "max_delay": 0.2},
    "timeouts": {"connect": 2, "read": 1.5},
}


@pytest.fixture(scope="session")
def rel_registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.close()


def unique_image(marker: str | None = None, *, size: int = 4 << 20) -> archives.Image:
    """A runnable busybox image plus an incompressible layer of `size` bytes unique to this call."""
    marker = marker or uuid.uuid4().hex[:10]
    return archives.Image(
        [
            archives.busybox_layer(),
            archives.layer({"etc/marker": marker.encode(), "blob": os.urandom(size)}, compress=False),
        ],
        cmd=["/bin/echo", marker],
    )
