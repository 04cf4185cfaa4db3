"""crictl (cri-tools v1.37.0, built by tools/peers.py) as a real client of imaged's CRI socket, on
containerd 1.6 and 2.x: `crictl --runtime-endpoint unix://<containerd> --image-endpoint
unix://<imaged's cri.sock>` pull, images, inspecti, rmi and imagefsinfo, as in the README. What
imaged passes on is compared with what crictl reads from containerd's own CRI."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cri.conftest import Node
from tests.cri.test_pull_image import records
from tests.support import archives, critools, peers


@pytest.fixture(scope="module", autouse=True)
def _cri_tools() -> None:
    """Before anything is started: cri-tools is built (or the module is skipped, IMAGED_PEERS=none)."""
    peers.require("cri-tools")


def crictl(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """crictl with imaged's CRI socket as its image endpoint."""
    return critools.crictl(node.containerd.socket, node.cri_socket, *args)


def containerds_crictl(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """crictl with containerd's own CRI as its image endpoint."""
    return critools.crictl(node.containerd.socket, node.containerd.socket, *args)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args[9:]} exited {r.returncode}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def signed(node: Node) -> tuple[str, archives.Image, str]:
    """(tag, image, manifest digest) of a signed image the rule covers."""
    img = archives.simple_image(f"crictl-signed-{node.containerd.major}")
    digest = node.push_signed(node.reg, "signed/crictl", "v1", img)
    return f"{node.reg.host}/signed/crictl:v1", img, digest


def test_crictl_pull_of_a_signed_image_is_allowed(
    node: Node, signed: tuple[str, archives.Image, str]
) -> None:
    ref, img, digest = signed
    out = ok(crictl(node, "pull", ref))
    assert out.strip() == f"Image is up to date for {img.config_digest}"
    found = records(node.containerd)
    for name in (ref, f"{node.reg.host}/signed/crictl@{digest}", img.config_digest):
        assert found[name]["imaged.dev/verified"].startswith("verified via legacy signature"), found


def test_crictl_pull_of_an_unsigned_image_is_refused_with_the_policys_reason(node: Node) -> None:
    img = archives.simple_image(f"crictl-unsigned-{node.containerd.major}")
    digest = archives.push(node.reg, "signed/crictl-unsigned", "v1", img)
    ref = f"{node.reg.host}/signed/crictl-unsigned:v1"
    r = crictl(node, "pull", ref)
    assert r.returncode != 0, r.stdout
    # crictl prints the status as gRPC gives it: code and imaged's reason.
    assert "code = PermissionDenied desc = image verification failed: " in r.stderr, r.stderr
    assert f"{node.reg.host}/signed/crictl-unsigned@{digest}: no signatures found; rule 0" in r.stderr
    assert f"no legacy signature tag sha256-{digest[7:]}.sig" in r.stderr
    assert not [n for n in records(node.containerd) if "crictl-unsigned" in n]
    assert containerds_crictl(node, "inspecti", ref).returncode != 0


def test_crictl_images_lists_the_tag_and_digest(node: Node, signed: tuple[str, archives.Image, str]) -> None:
    ref, img, digest = signed
    ok(crictl(node, "pull", ref))
    repo = ref.rsplit(":", 1)[0]
    table = ok(crictl(node, "images", "--digests")).splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "DIGEST", "IMAGE", "ID", "SIZE"]
    rows = [line.split() for line in table[1:]]
    # crictl shortens digest and id to 13 characters of their hex.
    assert [repo, "v1", digest[7:20], img.config_digest[7:20]] in [row[:4] for row in rows], table
    listed = json.loads(ok(crictl(node, "images", "-o", "json")))["images"]
    (mine,) = [i for i in listed if i["id"] == img.config_digest]
    assert mine["repoTags"] == [ref]
    assert mine["repoDigests"] == [f"{repo}@{digest}"]
    # What containerd's own CRI lists, exactly.
    assert listed == json.loads(ok(containerds_crictl(node, "images", "-o", "json")))["images"]


def test_crictl_inspecti_shows_the_id_and_repo_tags_and_digests(
    node: Node, signed: tuple[str, archives.Image, str]
) -> None:
    ref, img, digest = signed
    ok(crictl(node, "pull", ref))
    doc = json.loads(ok(crictl(node, "inspecti", ref)))
    status = doc["status"]
    assert status["id"] == img.config_digest
    assert status["repoTags"] == [ref]
    assert status["repoDigests"] == [f"{ref.rsplit(':', 1)[0]}@{digest}"]
    assert doc["info"]["imageSpec"]["config"]["Cmd"] == [
        "/bin/echo",
        f"crictl-signed-{node.containerd.major}",
    ]
    # By id and by digest too; each the same as containerd's CRI's answer (verbose info included).
    for name in (ref, img.config_digest, status["repoDigests"][0]):
        mine = json.loads(ok(crictl(node, "inspecti", name)))
        assert mine == doc, name
        assert mine == json.loads(ok(containerds_crictl(node, "inspecti", name))), name


def test_crictl_rmi_removes_the_image_from_containerds_cri_too(
    node: Node, signed: tuple[str, archives.Image, str]
) -> None:
    ref, img, digest = signed
    ok(crictl(node, "pull", ref))
    assert ok(crictl(node, "rmi", ref)).strip() == f"Deleted: {ref}"
    assert img.config_digest not in ok(crictl(node, "images", "-q"))
    r = crictl(node, "inspecti", ref)
    assert r.returncode != 0 and f'no such image \\"{ref}\\" present' in r.stderr, r.stderr
    # containerd's own CRI: gone by every name, and no record left.
    for name in (ref, img.config_digest, f"{ref.rsplit(':', 1)[0]}@{digest}"):
        assert containerds_crictl(node, "inspecti", name).returncode != 0, name
    assert img.config_digest not in ok(containerds_crictl(node, "images", "-q"))
    assert not [n for n in records(node.containerd) if "signed/crictl@" in n or n == ref]


def test_crictl_imagefsinfo(node: Node) -> None:
    mine = json.loads(ok(crictl(node, "imagefsinfo")))["status"]["imageFilesystems"]
    theirs = json.loads(ok(containerds_crictl(node, "imagefsinfo")))["status"]["imageFilesystems"]
    snapshots = f"{node.containerd.dir}/root/io.containerd.snapshotter.v1.overlayfs"
    assert [fs["fsId"]["mountpoint"] for fs in mine] == [snapshots]
    # Usage and timestamp are containerd's periodic measure: the same filesystem, the same keys.
    assert [fs["fsId"] for fs in mine] == [fs["fsId"] for fs in theirs]
    assert [sorted(fs) for fs in mine] == [sorted(fs) for fs in theirs]
