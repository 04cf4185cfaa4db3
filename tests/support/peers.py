"""The real peers built from their Go modules by tools/peers.py, as the tests use them.

`require("containerd")` is the bin directory of a built peer. A peer that is missing, or whose build
failed, fails the test that needs it with the builder's message (module, version, Go's error);
`IMAGED_PEERS=none` in the environment skips those tests instead, by the operator's explicit choice.
`ensure_built()` (called once from tests/conftest.py at configuration) builds whatever is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest

TOOLS = pathlib.Path(__file__).resolve().parent.parent.parent / "tools" / "peers.py"


@functools.cache
def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imaged_tools_peers", TOOLS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


_errors: dict[str, str] = {}


def opted_out() -> bool:
    return bool(builder().opted_out())


def ensure_built() -> dict[str, str]:
    """Build the missing peers (a no-op when all are in the cache); returns {name: error}."""
    if opted_out():
        return {}
    _errors.clear()
    _errors.update(builder().build_all())
    return dict(_errors)


def version(name: str) -> str:
    return str(builder().PEERS[name].version)


def require(name: str) -> pathlib.Path:
    """The bin directory of peer `name`; fails the test if it is not built (skips: IMAGED_PEERS=none)."""
    b = builder()
    peer = b.PEERS[name]
    if b.opted_out():
        pytest.skip(f"IMAGED_PEERS=none: the {name} peer ({peer.module}@{peer.version}) is not used")
    if not b.is_built(peer):
        if name not in _errors:
            try:
                b.build(peer)
            except (b.PeerBuildError, OSError) as e:
                _errors[name] = str(e)
        if name in _errors:
            pytest.fail(f"peer {name} is missing: {_errors[name]}", pytrace=False)
    return pathlib.Path(b.bin_dir(peer))


def program(name: str, prog: str) -> str:
    """The path of program `prog` of peer `name` (see `require`)."""
    return str(require(name) / prog)
