"""cosign's new bundle format through the OCI referrers API, on a real registry that serves it.

Debian's docker-registry 2.8 has no referrers API, so there cosign writes the `sha256-<hex>` tag
(tests/verify/test_cosign_interop.py). olareg (tools/peers.py) serves the API: cosign `sign --key
--new-bundle-format` pushes the bundle referrer by digest, olareg answers its PUT with `OCI-Subject`,
and cosign writes no tag. imaged's daemon then finds the bundle through `GET /v2/<name>/referrers/
<digest>` (olareg's request log shows which requests imaged made), for a Verify call and for a pull
under a publicKey rule; an altered copy of the bundle, listed by the API as the image's only
referrer, is refused, while an unaltered copy pushed the same way verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.cosign import Cosign
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.olareg import Olareg, Request
from tests.support.sigstore import OCI_INDEX, OCI_MANIFEST, OciPusher

BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


@dataclass
class Env:
    reg: Olareg
    cosign: Cosign
    daemon: DaemonProcess
    oci: OciPusher

    def image(self, repo: str, marker: str | None = None) -> tuple[str, str]:
        """A runnable image `cosign/<repo>:v1`; returns (tag reference, digest reference).

        The same `marker` pushed to two repositories gives the same image (same digest) in both.
        """
        image = archives.simple_image(marker or f"{repo}-{uuid.uuid4().hex[:8]}")
        digest = archives.push(self.reg, f"cosign/{repo}", "v1", image)
        return f"{self.reg.host}/cosign/{repo}:v1", f"{self.reg.host}/cosign/{repo}@{digest}"

    def get_json(self, path: str) -> Any:
        req = urllib.request.Request(self.reg.url + path, headers={"Accept": OCI_INDEX})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def tags(self, repo: str) -> list[str]:
        return list(self.get_json(f"/v2/cosign/{repo}/tags/list")["tags"])

    def referrers(self, ref: str) -> list[dict[str, Any]]:
        """What olareg's referrers API lists for a digest reference."""
        doc = self.get_json(f"/v2/{path_of(ref)}/referrers/{digest_of(ref)}")
        assert doc["mediaType"] == OCI_INDEX, doc
        return list(doc["manifests"])

    def verify(self, ref: str) -> image_pb2.ImageServiceVerifyResponse:
        return self.daemon.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)

    def refused(self, ref: str) -> str:
        with pytest.raises(grpc.RpcError) as e:
            self.verify(ref)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        return str(e.value.details())

    def imaged_requests(self, since: int) -> list[Request]:
        return [r for r in self.reg.requests()[since:] if r.user_agent.startswith("imaged/")]


@pytest.fixture(scope="module")
def env(containerd: PrivateContainerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reg = Olareg()
    try:
        cs = Cosign(tmp_path_factory.mktemp("cosign-referrers"))
        rules = [{"image": f"{reg.host}/cosign/*", "publicKey": {"certificate": cs.pub.read_text()}}]
        d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
        d.start()
        try:
            yield Env(reg, cs, d, OciPusher(reg))
        finally:
            d.stop()
    finally:
        reg.close()


def digest_of(ref: str) -> str:
    return ref.split("@", 1)[1]


def path_of(ref: str) -> str:
    """`cosign/<repo>` of a reference."""
    return ref.split("/", 1)[1].split("@", 1)[0].split(":", 1)[0]


def manifest_json(env: Env, repo: str, digest: str) -> dict[str, Any]:
    found = env.oci.get_manifest(repo, digest)
    assert found is not None and found.data is not None, (repo, digest)
    return dict(json.loads(found.data))


def fallback_tag(ref: str) -> str:
    return digest_of(ref).replace(":", "-")


def signed_through_the_api(env: Env, ref: str) -> dict[str, Any]:
    """cosign signs `ref` (new bundle format); asserts it used the referrers API, not the tag fallback.

    Returns the one referrer the API lists.
    """
    since = len(env.reg.requests())
    env.cosign.sign(ref)
    by_cosign = [r for r in env.reg.requests()[since:] if r.user_agent.startswith("cosign/")]
    assert by_cosign, "cosign's User-Agent is recognized in olareg's log"
    puts = [r for r in by_cosign if r.method == "PUT" and "/manifests/" in r.bare_path]
    # One manifest pushed, by digest, and olareg told cosign it indexed its subject.
    assert len(puts) == 1, puts
    (put,) = puts
    assert put.status == 201 and put.bare_path.rsplit("/", 1)[1].startswith("sha256:"), put
    assert f"Oci-Subject:[{digest_of(ref)}]" in put.response_headers, put.response_headers
    # No fallback tag: not written, not in the tag list.
    assert not [r for r in by_cosign if fallback_tag(ref) in r.path], by_cosign
    tags = env.tags(path_of(ref).split("/", 1)[1])
    assert tags == ["v1"], tags
    (entry,) = env.referrers(ref)
    assert entry["digest"] == put.bare_path.rsplit("/", 1)[1]
    assert entry["artifactType"] == BUNDLE_ARTIFACT_TYPE, entry
    assert entry["annotations"]["dev.sigstore.bundle.predicateType"] == SIGN_PREDICATE, entry
    manifest = manifest_json(env, path_of(ref), entry["digest"])
    assert manifest["subject"]["digest"] == digest_of(ref), manifest
    return entry


def assert_imaged_used_the_api(env: Env, ref: str, since: int) -> None:
    """imaged asked olareg's referrers API for the digest (200) and never looked for a signature tag."""
    asked = env.imaged_requests(since)
    api = f"/v2/{path_of(ref)}/referrers/{digest_of(ref)}"
    assert [r for r in asked if r.method == "GET" and r.bare_path == api and r.status == 200], asked
    tag_prefix = f"/v2/{path_of(ref)}/manifests/{fallback_tag(ref)}"  # the fallback tag and `.sig`
    assert not [r for r in asked if r.bare_path.startswith(tag_prefix)], asked


# -- cosign signs through the API, imaged verifies through it -----------------------------------


def test_cosign_signs_through_the_referrers_api_and_the_verify_rpc_reads_it(env: Env) -> None:
    tag, ref = env.image("verify")
    entry = signed_through_the_api(env, ref)
    since = len(env.reg.requests())
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert resp.digested_image_ref == ref
    assert f"via bundle referrer with digest {entry['digest']}" in resp.message, resp.message
    assert_imaged_used_the_api(env, ref, since)


def test_a_pull_under_a_verify_rule_reads_the_referrers_api(env: Env, containerd: PrivateContainerd) -> None:
    marker = f"pull-{uuid.uuid4().hex[:8]}"
    tag, ref = env.image("pull", marker)
    entry = signed_through_the_api(env, ref)
    since = len(env.reg.requests())
    last = None
    for msg in env.daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=tag), timeout=120
    ):
        last = msg
    assert last is not None and last.name == ref, last
    assert_imaged_used_the_api(env, ref, since)
    listed = {r.name: r for r in env.daemon.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    label = listed[tag].labels["imaged.dev/verified"]
    assert label.startswith(f"verified via bundle referrer with digest {entry['digest']}"), label
    out = containerd.ctr("run", "--rm", tag, f"referrers-{uuid.uuid4().hex[:6]}", namespace="system").stdout
    assert out.strip() == marker
    env.daemon.images.Remove(
        image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=tag), timeout=60
    )


# -- copies of a cosign bundle, listed by the API ---------------------------------------------------


def copy_bundle_referrer(env: Env, name: str, *, alter: bool = False, subject_of_other: bool = False) -> str:
    """cosign signs an image in `cosign/<name>-src`; a copy of its bundle referrer goes to `cosign/<name>`.

    The same image (same digest) is pushed to `cosign/<name>`, unsigned; the copy of cosign's
    referrer manifest and bundle is pushed there by digest, `subject` the image, so olareg's API
    lists it as that image's only referrer. `alter`: one byte of the DSSE signature flipped.
    `subject_of_other`: the copy is made the referrer of another image (`cosign/<name>`'s own
    content differs from the signed one). Returns the tag reference to verify.
    """
    marker = f"{name}-{uuid.uuid4().hex[:8]}"
    _, signed = env.image(f"{name}-src", marker)
    entry = signed_through_the_api(env, signed)
    src = path_of(signed)
    manifest = manifest_json(env, src, entry["digest"])
    bundle = json.loads(env.oci.get_blob(src, manifest["layers"][0]["digest"]))
    if alter:
        sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    tag, target = env.image(name, None if subject_of_other else marker)
    assert (digest_of(target) == digest_of(signed)) is not subject_of_other
    repo = path_of(target)
    layer = env.oci.push_blob(repo, json.dumps(bundle).encode(), manifest["layers"][0]["mediaType"])
    env.oci.push_blob(
        repo, env.oci.get_blob(src, manifest["config"]["digest"]), manifest["config"]["mediaType"]
    )
    subject = env.oci.descriptor(repo, digest_of(target))
    copy = {
        **manifest,
        "layers": [{**manifest["layers"][0], "digest": layer.digest, "size": layer.size}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    }
    body = json.dumps(copy).encode()
    pushed = env.oci.put_manifest(repo, "sha256:" + hashlib.sha256(body).hexdigest(), body, OCI_MANIFEST)
    (listed,) = env.referrers(target)
    assert listed["digest"] == pushed.digest and listed["artifactType"] == BUNDLE_ARTIFACT_TYPE, listed
    assert env.tags(name) == ["v1"]
    return tag


def test_an_unaltered_copy_of_the_bundle_verifies(env: Env) -> None:
    # The control for the two below: copying a referrer this way keeps it valid.
    tag = copy_bundle_referrer(env, "copy")
    since = len(env.reg.requests())
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert_imaged_used_the_api(env, resp.digested_image_ref, since)


def test_an_altered_copy_of_the_bundle_is_refused(env: Env) -> None:
    tag = copy_bundle_referrer(env, "altered", alter=True)
    details = env.refused(tag)
    assert "DSSE signature does not verify with the rule's" in details, details


def test_the_bundle_as_the_referrer_of_another_image_is_refused(env: Env) -> None:
    tag = copy_bundle_referrer(env, "moved", subject_of_other=True)
    details = env.refused(tag)
    assert "do not include the image digest" in details, details
