"""Start-up cost: help, completion and usage errors load neither grpc nor rich; list loads no rich.

`imagectl list` is compared with `ctr images ls`, so what it imports is part of its contract.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.daemon import DaemonProcess


def imported(*args: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imaged.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return {
        line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")
    }


def test_no_grpc_or_rich_without_a_daemon_call() -> None:
    for args in (("--help",), ("--version",), ("completion", "bash"), ("frobnicate",)):
        mods = imported(*args)
        assert "argparse" in mods  # the measurement works
        assert not {m for m in mods if m.split(".")[0] in ("grpc", "rich", "google")}, args


def test_list_loads_grpc_but_not_rich(daemon: DaemonProcess) -> None:
    mods = imported("--socket", daemon.socket, "list")
    assert "grpc" in mods and "imaged.cli.client" in mods  # importlib.import_module itself is not timed
    assert not {m for m in mods if m.split(".")[0] == "rich"}
    assert "imaged.registry.reference" not in mods and "pydantic" not in mods
