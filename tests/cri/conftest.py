"""The CRI socket against a real containerd: a daemon with `listen.cri`, registries with signed,
unsigned and private images, and a pause image for pod sandboxes (imported under the name
containerd's CRI is configured with, so no sandbox image is ever pulled).

The containerd is this package's own: its CRI runs pod sandboxes, which here needs
`restrict_oom_score_adj` (the machine may lack CAP_SYS_RESOURCE, and CRI gives a sandbox an OOM
score below containerd's own otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

USERS = {"kube": "pull-s3cret"}


@dataclass
class Env:
    reg: Registry  # open registry
    private: Registry  # token auth; credentials only in PullImageRequest.auth
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
    d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
    sock = str(d.dir / "cri.sock")
    d.config["listen"]["cri"] = {"path": sock}
    d.config_path.write_text(yaml.safe_dump(d.config))
    d.start()
    try:
        yield Env(reg, private, d, ps, key, sock)
    finally:
        d.stop()
        reg.close()
        private.close()
