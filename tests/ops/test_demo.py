"""`make demo` (tools/demo.py) gives a newcomer something to pull and verify offline: its registry,
its signed and unsigned images and the rule it adds must work with a running daemon, as README says."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import yaml

from tests.cli.conftest import run_imagectl
from tests.conftest import REPO
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import free_port


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _wait_reloaded(d: DaemonProcess, rule: str) -> None:
    deadline = time.monotonic() + 20
    while rule not in d.logs() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_demo_images_pull_run_and_verify(containerd: PrivateContainerd, tmp_path: pathlib.Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    d = DaemonProcess(containerd.socket, config={"log": {"level": "info"}})
    d.start()
    pidfile = tmp_path / "registry" / "pid"
    try:
        r = _demo("--registry", host, "--run-dir", str(tmp_path), "--config", str(d.config_path))
        assert r.returncode == 0, r.stderr
        assert "the daemon re-read its configuration" in r.stdout
        config = yaml.safe_load(d.config_path.read_text())
        rule = config["verification"]["rules"][0]
        assert rule["image"] == f"{host}/demo/*"
        assert rule["publicKey"]["certificate"] == (tmp_path / "demo" / "cosign.pub").read_text()
        assert config["listen"] == d.config["listen"], "the rest of the configuration is kept"
        _wait_reloaded(d, "configuration reloaded")

        sock = ["--socket", d.socket]
        ref = f"{host}/demo/hello:v1"
        pulled = run_imagectl(*sock, "-n", "system", "pull", ref)
        assert pulled.rc == 0, pulled.err
        out = subprocess.run(
            ["ctr", "-a", containerd.socket, "-n", "system", "run", "--rm", ref, f"demo-{os.getpid()}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (out.returncode, out.stdout) == (0, "hello\n"), out.stderr
        signed = run_imagectl(*sock, "verify", ref)
        assert signed.rc == 0, signed.err
        assert "verified:  yes" in signed.out and f"rule 0 ({host}/demo/*)" in signed.out
        unsigned = run_imagectl(*sock, "verify", f"{host}/demo/unsigned:v1")
        assert unsigned.rc == 2
        assert "no signatures found" in unsigned.err

        # Again: the key is kept, the file and its backup of the configuration before the demo too.
        key = (tmp_path / "demo" / "cosign.key").read_bytes()
        backup = d.config_path.with_name(d.config_path.name + ".bak")
        original, with_rule = backup.read_text(), d.config_path.read_text()
        assert "demo" not in original
        again = _demo("--registry", host, "--run-dir", str(tmp_path), "--config", str(d.config_path))
        assert again.returncode == 0, again.stderr
        assert "using the registry already answering" in again.stdout
        assert "has the publicKey rule" in again.stdout
        assert (tmp_path / "demo" / "cosign.key").read_bytes() == key
        assert (d.config_path.read_text(), backup.read_text()) == (with_rule, original)
        # The image was pushed again (a new digest): pulling the tag brings it.
        moved = run_imagectl(*sock, "-n", "system", "pull", ref)
        assert moved.rc == 0 and moved.out.splitlines()[-1] != pulled.out.splitlines()[-1], moved.out
        assert run_imagectl(*sock, "-n", "system", "rm", ref).rc == 0
    finally:
        d.stop()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
