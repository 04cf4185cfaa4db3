"""The CRI socket against a real containerd: a daemon with `listen.cri`, registries with signed,
unsigned and private images, and a pause image for pod sandboxes (imported under the name
containerd's CRI is configured with, so no sandbox image is ever pulled).

The containerd is this package's own: its CRI runs pod sandboxes, which here needs
`restrict_oom_score_adj` (the machine may lack CAP_SYS_RESOURCE, and CRI gives a sandbox an OOM
score below containerd's own otherwise).

`node` is the same arrangement on either containerd, a module-scoped fixture parametrized over
Debian's 1.6 and the built 2.x (`[containerd1.6]`, `[containerd2]`; a module may narrow it with
`@pytest.mark.parametrize("node", ["2"], indirect=True)`): a containerd, an imaged with `listen.cri`
in front of it, an open registry and a `publicKey` rule for its `signed/*` repositories."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from imaged.cri.transfer import CriTransfer
from imaged.registry.config import RegistriesConfig
from tests.conftest import CONTAINERD_VERSIONS, new_containerd
from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

USERS = {"kube": "pull-s3cret"}


@dataclass
class Node:
    containerd: PrivateContainerd
    reg: Registry  # open registry
    daemon: DaemonProcess
    sigstore: PrivateSigstore
    key: object
    cri_socket: str  # imaged's CRI socket

    def sign(self, reg: Registry, repo: str, digest: str) -> None:
        sig = self.sigstore.sign_legacy(digest, f"{reg.host}/{repo}", self.key, tlog=False)  # type: ignore[arg-type]
        OciPusher(reg).push_legacy_signatures(repo, digest, [sig])

    def push_signed(self, reg: Registry, repo: str, tag: str, image: archives.Image) -> str:
        digest = archives.push(reg, repo, tag, image)
        self.sign(reg, repo, digest)
        return digest


@dataclass
class Env(Node):
    private: Registry  # token auth; credentials only in PullImageRequest.auth


def cri_daemon(containerd_socket: str, rules: list[dict[str, object]]) -> tuple[DaemonProcess, str]:
    """An imaged (not started) with `rules` and `listen.cri`; returns it and its CRI socket."""
    d = DaemonProcess(containerd_socket, {"verification": {"rules": rules}})
    sock = str(d.dir / "cri.sock")
    d.config["listen"]["cri"] = {"path": sock}
    d.config_path.write_text(yaml.safe_dump(d.config))
    return d, sock


@pytest.fixture(scope="package")
def containerd() -> Iterator[PrivateContainerd]:
    cd = PrivateContainerd()
    text = cd.config.read_text()
    anchor = "disable_apparmor = true"
    assert anchor in text, "the test containerd's CRI section changed: put restrict_oom_score_adj there"
    cd.config.write_text(text.replace(anchor, f"{anchor}\n  restrict_oom_score_adj = true", 1))
    cd.start()
    yield cd
    cd.destroy()


@pytest.fixture(scope="package")
def pause_image(containerd: PrivateContainerd) -> str:
    name = cri.sandbox_image(containerd.socket)
    img = archives.Image([archives.busybox_layer()], cmd=["/bin/busybox", "sleep", "3600"])
    containerd.ctr("images", "import", "-", namespace="k8s.io", input=archives.oci_archive([(name, img)]))
    return name


@pytest.fixture(scope="package")
def env(containerd: PrivateContainerd) -> Iterator[Env]:
    reg = Registry()
    private = Registry(htpasswd=USERS, token_auth=True)
    ps = PrivateSigstore(seed=b"cri-endpoint")
    key = ps.static_key()
    pem = key.public_pem.decode()
    rules = [
        {"image": f"{reg.host}/signed/*", "publicKey": {"certificate": pem}},
        {"image": f"{private.host}/signed/*", "publicKey": {"certificate": pem}},
        {"image": f"{reg.host}/denied/*", "deny": True},
    ]
    d, sock = cri_daemon(containerd.socket, rules)
    d.start()
    try:
        yield Env(
            containerd=containerd, reg=reg, daemon=d, sigstore=ps, key=key, cri_socket=sock, private=private
        )
    finally:
        d.stop()
        reg.close()
        private.close()


@pytest.fixture(scope="module", params=CONTAINERD_VERSIONS, ids=lambda v: f"containerd{v}")
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    cd = new_containerd(request.param)
    cd.start()
    reg = Registry()
    ps = PrivateSigstore(seed=b"cri-node")
    key = ps.static_key()
    rules = [{"image": f"{reg.host}/signed/*", "publicKey": {"certificate": key.public_pem.decode()}}]
    d, sock = cri_daemon(cd.socket, rules)
    try:
        d.start()
        yield Node(containerd=cd, reg=reg, daemon=d, sigstore=ps, key=key, cri_socket=sock)
    finally:
        d.stop()
        cd.destroy()
        reg.close()


def cri_transfer(
    registries: dict[str, object] | None = None, *, progress_interval: float = 0.1
) -> CriTransfer:
    """A CriTransfer as the daemon builds one, for tests that drive it in-process."""
    return CriTransfer(
        owner="test",
        snapshotter="overlayfs",
        lease_expire=dt.timedelta(hours=1),
        registries=RegistriesConfig.model_validate(registries or {}),
        progress_interval=progress_interval,
    )
