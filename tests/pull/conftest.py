from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.registry import Registry


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    reg = Registry()
    yield reg
    reg.close()
