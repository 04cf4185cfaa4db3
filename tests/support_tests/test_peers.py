"""tools/peers.py: pins in one place, the cache reused, a failed build named with Go's own error."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support import peers


def test_every_peer_is_pinned_once_and_built() -> None:
    b = peers.builder()
    assert set(b.PEERS) == {"containerd", "cri-tools", "cosign", "olareg", "distribution"}
    programs = {p.name for peer in b.PEERS.values() for p in peer.programs}
    assert programs == {
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "crictl",
        "critest",
        "cosign",
        "olareg",
        "registry",
    }
    if peers.opted_out():
        pytest.skip("IMAGED_PEERS=none")
    for name, peer in b.PEERS.items():
        bin_dir = peers.require(name)
        assert bin_dir == b.cache_dir() / f"{name}-{peer.version}" / "bin"
        assert not bin_dir.is_relative_to(REPO), "the cache is outside the work tree"


def test_built_peers_report_the_pinned_versions() -> None:
    containerd = peers.program("containerd", "containerd")
    out = subprocess.run([containerd, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert peers.version("containerd") in out
    crictl = peers.program("cri-tools", "crictl")
    out = subprocess.run([crictl, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert peers.version("cri-tools") in out
    critest = peers.program("cri-tools", "critest")
    out = subprocess.run([critest, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert f"critest version: {peers.version('cri-tools')}" in out
    cosign = peers.program("cosign", "cosign")
    out = subprocess.run([cosign, "version"], capture_output=True, text=True, timeout=30).stdout
    assert f"GitVersion:    {peers.version('cosign')}" in out
    olareg = peers.program("olareg", "olareg")
    out = subprocess.run([olareg, "version"], capture_output=True, text=True, timeout=30).stdout
    assert f"VCSTag:     {peers.version('olareg')}" in out
    registry = peers.program("distribution", "registry")
    out = subprocess.run([registry, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert out.split()[-1] == peers.version("distribution"), out


def test_a_present_peer_is_reused_without_go(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = peers.builder()
    peer = b.PEERS["cosign"]
    monkeypatch.setenv("IMAGED_PEERS_CACHE", str(tmp_path))
    (tmp_path / peer.key / "bin").mkdir(parents=True)
    (tmp_path / peer.key / "bin" / "cosign").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "/nonexistent")  # no Go: a build would fail
    assert b.build(peer) == 0.0


def test_a_failed_build_names_the_module_version_and_go_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = peers.builder()
    monkeypatch.setenv("IMAGED_PEERS_CACHE", str(tmp_path))
    bogus = b.Peer(
        name="containerd",
        module="github.com/containerd/containerd/v2",
        version="v2.99.99",
        programs=(b.Program("ctr", "cmd/ctr"),),
    )
    with pytest.raises(b.PeerBuildError) as e:
        b.build(bogus, quiet=True)
    msg = str(e.value)
    assert "github.com/containerd/containerd/v2@v2.99.99" in msg
    assert "go mod download" in msg and "v2.99.99" in msg.split("failed", 1)[1], msg
    assert list(tmp_path.iterdir()) == [], "nothing that looks built is left behind"


def test_opting_out_builds_nothing(tmp_path: pathlib.Path) -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "peers.py"), "build"],
        env={"IMAGED_PEERS": "none", "IMAGED_PEERS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "IMAGED_PEERS=none" in r.stdout
    assert list(tmp_path.iterdir()) == []
