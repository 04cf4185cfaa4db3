"""The `imaged-image-verifier` shim run by a real containerd 2.x (`io.containerd.image-verifier.v1.bindir`).

containerd 2.x (built from its Go module by tools/peers.py) runs every executable of its `bin_dir`
before a pull made through the Transfer service. Its `bin_dir` holds a link to the shim and, beside
it, `00-record`: a one-line script that appends the arguments it was run with to a file and allows,
so the tests see which pulls reach the verifiers (verifiers are ANDed: the recorder never changes a
verdict). The shim reaches the test's imaged through IMAGED_SOCKET in containerd's environment, as a
systemd unit would set it.

Measured here (README, "containerd 2.x"): `ctr image pull` (Transfer) is verified; `ctr image pull
--local` and `ctr image import` are not; a CRI `PullImage` is verified with the default CRI config and
with a hosts.toml mirror (`registry.config_path`), and is not when the CRI config has
`registry.mirrors` (containerd then falls back to its local pull, logging a warning).
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import archives, peers
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

SHIM = pathlib.Path(sys.executable).parent / "imaged-image-verifier"
REPOS = ("bindir/signed", "bindir/unsigned", "bindir/other")


@dataclass
class Env:
    reg: Registry
    daemon: DaemonProcess
    digests: dict[str, str]
    verifiers: pathlib.Path
    record: pathlib.Path
    dir: pathlib.Path

    def recorded(self) -> list[list[str]]:
        if not self.record.exists():
            return []
        return [shlex.split(line) for line in self.record.read_text().splitlines() if line.strip()]

    def seen(self, repo: str) -> list[list[str]]:
        """The verifier calls (argument lists) whose -name names `repo`."""
        return [args for args in self.recorded() if any(f"/{repo}:" in a or f"/{repo}@" in a for a in args)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    peers.require("containerd")
    work = tmp_path_factory.mktemp("bindir")
    reg = Registry()
    ps = PrivateSigstore(seed=b"bindir-tests")
    key = ps.static_key()
    digests = {repo: archives.push(reg, repo, "v1", archives.simple_image(repo)) for repo in REPOS}
    sig = ps.sign_legacy(digests["bindir/signed"], f"{reg.host}/bindir/signed", key, tlog=False)
    OciPusher(reg).push_legacy_signatures("bindir/signed", digests["bindir/signed"], [sig])
    rule = {"publicKey": {"certificate": key.public_pem.decode()}}
    rules = [{"image": f"{reg.host}/bindir/signed", **rule}, {"image": f"{reg.host}/bindir/unsigned", **rule}]
    verifiers = work / "verifiers"
    verifiers.mkdir()
    (verifiers / "imaged-image-verifier").symlink_to(SHIM)
    record = work / "verifier-calls"
    recorder = verifiers / "00-record"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {record}\ncat >/dev/null\necho recorded\n')
    recorder.chmod(0o755)
    # The daemon is made first: containerd's environment names its socket.
    daemon = DaemonProcess("/nonexistent", {"verification": {"rules": rules}})
    e = Env(reg, daemon, digests, verifiers, record, work)
    yield e
    daemon.stop()
    reg.close()


def verifier_config(verifiers: pathlib.Path) -> str:
    return f"""
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "{verifiers}"
  max_verifiers = 10
  per_verifier_timeout = "10s"
"""


@pytest.fixture(scope="module")
def cd2(env: Env) -> Iterator[PrivateContainerd]:
    """containerd 2.x with the bindir verifier, and the daemon started against it."""
    cd = PrivateContainerd(
        bin_dir=peers.require("containerd"),
        extra_config=verifier_config(env.verifiers),
        env={"IMAGED_SOCKET": env.daemon.socket},
    )
    cd.start()
    env.daemon.config["containerd"] = {"system_socket": cd.socket, "cri_socket": cd.socket}
    import yaml

    env.daemon.config_path.write_text(yaml.safe_dump(env.daemon.config))
    env.daemon.start()
    yield cd
    cd.destroy()


def ctr_pull(cd: PrivateContainerd, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cd.ctr("images", "pull", "--plain-http", *extra, ref, namespace="bindir", check=False, timeout=120)


def images(cd: PrivateContainerd, ns: str = "bindir") -> str:
    return cd.ctr("images", "ls", "-q", namespace=ns).stdout


def test_transfer_pull_of_a_signed_image_is_verified_and_allowed(env: Env, cd2: PrivateContainerd) -> None:
    ref = f"{env.reg.host}/bindir/signed:v1"
    r = ctr_pull(cd2, ref)
    assert r.returncode == 0, r.stderr
    assert ref in images(cd2)
    digest = env.digests["bindir/signed"]
    # Each verifier was run as containerd documents it: -name, -digest, -stdin-media-type.
    assert [
        "-name",
        ref,
        "-digest",
        digest,
        "-stdin-media-type",
        "application/vnd.oci.descriptor.v1+json",
    ] in (env.seen("bindir/signed"))


def test_transfer_pull_of_an_unsigned_image_is_blocked_with_the_reason(
    env: Env, cd2: PrivateContainerd
) -> None:
    ref = f"{env.reg.host}/bindir/unsigned:v1"
    r = ctr_pull(cd2, ref)
    assert r.returncode != 0, r.stdout
    assert env.seen("bindir/unsigned"), "the verifier ran"
    # containerd's error carries the shim's reason (its standard output).
    assert "imaged verifier" in r.stderr and "PERMISSION_DENIED" in r.stderr, r.stderr
    assert "no signatures found" in r.stderr, r.stderr
    assert ref not in images(cd2)


def test_imaged_down_blocks_the_pull(env: Env, cd2: PrivateContainerd) -> None:
    ref = f"{env.reg.host}/bindir/other:v1"
    env.daemon.stop()
    try:
        r = ctr_pull(cd2, ref)
        assert r.returncode != 0, r.stdout
        assert "cannot reach imaged" in r.stderr, r.stderr
        assert ref not in images(cd2)
    finally:
        env.daemon.start()
    r = ctr_pull(cd2, ref)
    assert r.returncode == 0, r.stderr
    assert ref in images(cd2)


def test_local_pull_does_not_run_the_verifiers(env: Env, cd2: PrivateContainerd) -> None:
    """`ctr image pull --local` pulls in the client, not through Transfer: no verifier runs (a gap)."""
    ref = f"{env.reg.host}/bindir/unsigned:v1"
    before = len(env.seen("bindir/unsigned"))
    r = ctr_pull(cd2, ref, "--local")
    assert r.returncode == 0, r.stderr
    assert len(env.seen("bindir/unsigned")) == before
    cd2.ctr("images", "rm", "--sync", ref, namespace="bindir")


def test_import_does_not_run_the_verifiers(env: Env, cd2: PrivateContainerd) -> None:
    """`ctr image import` (Transfer's import) is not verified either: an archive is trusted as given."""
    name = f"{env.reg.host}/bindir/unsigned:imported"
    data = archives.oci_archive([(name, archives.simple_image("bindir-import"))])
    before = len(env.recorded())
    cd2.ctr("images", "import", "-", namespace="bindir", input=data)
    assert name in images(cd2)
    assert len(env.recorded()) == before


# -- CRI PullImage, as the kubelet pulls ------------------------------------------------------------


def crictl_pull(cd: PrivateContainerd, ref: str, workdir: pathlib.Path) -> subprocess.CompletedProcess[str]:
    crictl = peers.program("cri-tools", "crictl")
    config = workdir / "crictl.yaml"
    config.write_text(
        f"runtime-endpoint: unix://{cd.socket}\nimage-endpoint: unix://{cd.socket}\ntimeout: 60\n"
    )
    return subprocess.run(
        [crictl, "--config", str(config), "pull", ref], capture_output=True, text=True, timeout=120
    )


def cri_containerd(env: Env, cri_images: str) -> PrivateContainerd:
    cd = PrivateContainerd(
        bin_dir=peers.require("containerd"),
        extra_config=verifier_config(env.verifiers) + cri_images,
        env={"IMAGED_SOCKET": env.daemon.socket},
    )
    cd.start()
    return cd


def hosts_dir(env: Env) -> pathlib.Path:
    """A containerd hosts.toml directory naming the test registry (plain HTTP) as its own server."""
    d = env.dir / "certs.d"
    (d / env.reg.host).mkdir(parents=True, exist_ok=True)
    (d / env.reg.host / "hosts.toml").write_text(
        f'server = "http://{env.reg.host}"\n'
        f'[host."http://{env.reg.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return d


CRI_CASES = {
    # The CRI config as a node would have it; `expect` is whether the verifiers run for a CRI pull.
    "default": ("", True),
    "config_path": ("hosts", True),
    "registry.mirrors": ("mirrors", False),
}


@pytest.mark.parametrize("case", list(CRI_CASES))
def test_which_cri_pulls_the_verifier_sees(env: Env, cd2: PrivateContainerd, case: str) -> None:
    kind, verified = CRI_CASES[case]
    section = "[plugins.'io.containerd.cri.v1.images'.registry]\n"
    if kind == "hosts":
        cri = section + f'  config_path = "{hosts_dir(env)}"\n'
    elif kind == "mirrors":
        cri = section + (
            f"[plugins.'io.containerd.cri.v1.images'.registry.mirrors.'{env.reg.host}']\n"
            f'  endpoint = ["http://{env.reg.host}"]\n'
        )
    else:
        cri = ""
    cd = cri_containerd(env, "\n" + cri)
    try:
        for repo, allowed_if_verified in (("bindir/signed", True), ("bindir/unsigned", False)):
            ref = f"{env.reg.host}/{repo}:v1"
            before = len(env.seen(repo))
            r = crictl_pull(cd, ref, env.dir)
            ran = len(env.seen(repo)) > before
            assert ran == verified, f"{case}: verifier ran={ran} for {ref}: {r.stderr}"
            if not verified or allowed_if_verified:
                assert r.returncode == 0, f"{case}: {ref}: {r.stderr}"
                assert ref in images(cd, "k8s.io")
            else:
                assert r.returncode != 0, f"{case}: {ref} was pulled"
                assert "no signatures found" in r.stderr, r.stderr
                assert ref not in images(cd, "k8s.io")
        log = cd.log.read_text()
        if kind == "mirrors":
            assert "Found 'Registry.Mirrors' in CRI config" in log, log[-3000:]
            assert "Falling back to local image pull mode" in log, log[-3000:]
        else:
            assert "Falling back to local image pull mode" not in log
    finally:
        cd.destroy()
