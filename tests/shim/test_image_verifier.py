"""The containerd 2.x `bindir` image verifier, run exactly as containerd runs it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

EXE = str(pathlib.Path(sys.executable).parent / "imaged-image-verifier")


@pytest.fixture(scope="module")
def setup(containerd: PrivateContainerd) -> Iterator[tuple[Registry, DaemonProcess, dict[str, str]]]:
    reg = Registry()
    ps = PrivateSigstore(seed=b"shim-tests")
    key = ps.static_key()
    pusher = OciPusher(reg)
    digests = {}
    for repo in ("shim/signed", "shim/unsigned", "shim/skipped", "shim/denied", "other/app"):
        digests[repo] = archives.push(reg, repo, "v1", archives.simple_image(repo))
    sig = ps.sign_legacy(digests["shim/signed"], f"{reg.host}/shim/signed", key, tlog=False)
    pusher.push_legacy_signatures("shim/signed", digests["shim/signed"], [sig])
    rules = [
        {"image": f"{reg.host}/shim/signed", "publicKey": {"certificate": key.public_pem.decode()}},
        {"image": f"{reg.host}/shim/unsigned", "publicKey": {"certificate": key.public_pem.decode()}},
        {"image": f"{reg.host}/shim/skipped", "skip": True},
        {"image": f"{reg.host}/shim/denied", "deny": True},
    ]
    d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
    d.start()
    yield reg, d, digests
    d.stop()
    reg.close()


def run_as_containerd(
    socket: str,
    name: str,
    digest: str,
    *,
    stdin: bytes | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1234}
    return subprocess.run(
        [
            EXE,
            "-name",
            name,
            "-digest",
            digest,
            "-stdin-media-type",
            "application/vnd.oci.descriptor.v1+json",
        ],
        input=json.dumps(desc).encode() if stdin is None else stdin,
        capture_output=True,
        timeout=10,
        env={"IMAGED_SOCKET": socket, "PATH": "/usr/bin:/bin", **(extra_env or {})},
    )


def test_allows_verified(setup) -> None:  # type: ignore[no-untyped-def]
    reg, d, digests = setup
    r = run_as_containerd(d.socket, f"{reg.host}/shim/signed:v1", digests["shim/signed"])
    assert r.returncode == 0, r.stdout
    assert r.stdout.decode().startswith(f"verified {reg.host}/shim/signed@{digests['shim/signed']}")


def test_blocks_unsigned_and_denied(setup) -> None:  # type: ignore[no-untyped-def]
    reg, d, digests = setup
    r = run_as_containerd(d.socket, f"{reg.host}/shim/unsigned:v1", digests["shim/unsigned"])
    assert r.returncode != 0
    assert "PERMISSION_DENIED" in r.stdout.decode() and "verification failed" in r.stdout.decode()
    r = run_as_containerd(d.socket, f"{reg.host}/shim/denied:v1", digests["shim/denied"])
    assert r.returncode != 0 and "denied by matched rule" in r.stdout.decode()


def test_allows_skip_and_no_match(setup) -> None:  # type: ignore[no-untyped-def]
    reg, d, digests = setup
    r = run_as_containerd(d.socket, f"{reg.host}/shim/skipped:v1", digests["shim/skipped"])
    assert r.returncode == 0 and "skipped" in r.stdout.decode()
    r = run_as_containerd(d.socket, f"{reg.host}/other/app:v1", digests["other/app"])
    assert r.returncode == 0 and "no matched rule" in r.stdout.decode()


def test_fails_closed(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg, d, digests = setup
    r = run_as_containerd(str(tmp_path / "nobody.sock"), f"{reg.host}/other/app:v1", digests["other/app"])
    assert r.returncode != 0 and "cannot reach imaged" in r.stdout.decode()
    # A descriptor for another digest than -digest is refused.
    other = {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 1}
    r = run_as_containerd(
        d.socket, f"{reg.host}/other/app:v1", digests["other/app"], stdin=json.dumps(other).encode()
    )
    assert r.returncode != 0 and "differs" in r.stdout.decode()
    r = subprocess.run([EXE, "-name", "x"], capture_output=True, timeout=10, env={"IMAGED_SOCKET": d.socket})
    assert r.returncode != 0 and "required" in r.stdout.decode()
    assert all(len(x) <= 32 * 1024 for x in (r.stdout,))


def test_an_unusable_timeout_blocks_the_pull_with_a_reason(setup) -> None:  # type: ignore[no-untyped-def]
    reg, d, digests = setup
    for bad in ("abc", "nan", "inf", "-1"):
        r = run_as_containerd(
            d.socket,
            f"{reg.host}/other/app:v1",
            digests["other/app"],
            extra_env={"IMAGED_VERIFIER_TIMEOUT": bad},
        )
        assert r.returncode != 0, bad
        assert "IMAGED_VERIFIER_TIMEOUT must be a positive number" in r.stdout.decode(), r.stdout
        assert b"Traceback" not in r.stderr
    ok = run_as_containerd(
        d.socket, f"{reg.host}/other/app:v1", digests["other/app"], extra_env={"IMAGED_VERIFIER_TIMEOUT": "5"}
    )
    assert ok.returncode == 0 and "no matched rule" in ok.stdout.decode()
