"""Session-wide real components: a private containerd and the imaged daemon in front of it.

The containerd matrix: a test module that sets `CONTAINERD_MATRIX = True` runs each of its tests that
uses `containerd`/`daemon` (or the per-module `cd`) against Debian's containerd 1.6 and against a
containerd 2.x built from its Go module (tools/peers.py), ids `[containerd1.6]` and `[containerd2]`.
The other modules use 1.6 only. Each version's containerd and daemon are started once per session.
"""

from __future__ import annotations

import pathlib
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import peers
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess

REPO = pathlib.Path(__file__).resolve().parent.parent
# Third-party data the tests read (signature vectors, the published seed proto): in the repository.
FIXTURES = REPO / "tests" / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    missing = [
        t for t in ("containerd", "ctr", "runc", "docker-registry", "skopeo", "umoci") if not shutil.which(t)
    ]
    if missing:
        raise pytest.UsageError(f"missing tools {missing}: run `make test`, which installs them")
    # The peers built from Go modules (a no-op when they are in the cache; IMAGED_PEERS=none: none).
    # A failed build fails the tests that need that peer, with the builder's message.
    peers.ensure_built()
    # A suite started as a background job (`make test &` in a script) inherits SIGINT ignored, and
    # so would every process it starts: imagectl's Ctrl-C tests need it as a terminal leaves it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test started and did not stop (a failure between start and its `finally`)."""
    yield
    for d in DaemonProcess.instances:
        d.stop(timeout=10)
    for cd in PrivateContainerd.instances:
        if cd.proc is not None and cd.proc.poll() is None:
            cd.destroy()


CONTAINERD_VERSIONS = ("1.6", "2")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not getattr(metafunc.module, "CONTAINERD_MATRIX", False):
        return
    for name in ("containerd", "cd"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, CONTAINERD_VERSIONS, indirect=True, ids=lambda v: f"containerd{v}")
            return


def new_containerd(version: str = "1.6", **kwargs: Any) -> PrivateContainerd:
    """A PrivateContainerd of `version` ("1.6": Debian's; "2": the built peer), not started."""
    if version == "1.6":
        return PrivateContainerd(**kwargs)
    return PrivateContainerd(bin_dir=peers.require("containerd"), **kwargs)


@pytest.fixture(scope="session")
def containerd_1_6() -> Iterator[PrivateContainerd]:
    cd = new_containerd("1.6")
    cd.start()
    yield cd
    cd.destroy()


@pytest.fixture(scope="session")
def containerd_2() -> Iterator[PrivateContainerd]:
    cd = new_containerd("2")
    cd.start()
    yield cd
    cd.destroy()


@pytest.fixture(scope="session")
def daemon_1_6(containerd_1_6: PrivateContainerd) -> Iterator[DaemonProcess]:
    d = DaemonProcess(containerd_1_6.socket)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def daemon_2(containerd_2: PrivateContainerd) -> Iterator[DaemonProcess]:
    d = DaemonProcess(containerd_2.socket)
    d.start()
    yield d
    d.stop()


# `containerd` and `daemon` only choose among the session's instances above: switching between
# parameters re-runs these (cheap) functions, never restarts a containerd or a daemon.
@pytest.fixture(scope="session")
def containerd(request: pytest.FixtureRequest) -> PrivateContainerd:
    version = getattr(request, "param", "1.6")
    cd = request.getfixturevalue("containerd_2" if version == "2" else "containerd_1_6")
    assert isinstance(cd, PrivateContainerd)
    return cd


@pytest.fixture(scope="session")
def daemon(request: pytest.FixtureRequest, containerd: PrivateContainerd) -> DaemonProcess:
    d = request.getfixturevalue("daemon_2" if containerd.major == 2 else "daemon_1_6")
    assert isinstance(d, DaemonProcess)
    return d


@pytest.fixture(scope="module")
def cd(request: pytest.FixtureRequest) -> Iterator[PrivateContainerd]:
    """A private containerd per module, for cases that stop it, crash against it or load it."""
    c = new_containerd(getattr(request, "param", "1.6"))
    c.start()
    yield c
    c.destroy()
