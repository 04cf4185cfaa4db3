"""Session-wide real components: a private containerd and the imaged daemon in front of it."""

from __future__ import annotations

import pathlib
import shutil
import signal
from collections.abc import Iterator

import pytest

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


@pytest.fixture(scope="session")
def containerd() -> Iterator[PrivateContainerd]:
    cd = PrivateContainerd()
    cd.start()
    yield cd
    cd.destroy()


@pytest.fixture(scope="session")
def daemon(containerd: PrivateContainerd) -> Iterator[DaemonProcess]:
    d = DaemonProcess(containerd.socket)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def cd() -> Iterator[PrivateContainerd]:
    """A private containerd per module, for cases that stop it, crash against it or load it."""
    c = PrivateContainerd()
    c.start()
    yield c
    c.destroy()
