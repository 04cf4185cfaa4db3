"""The real cosign v3 as the signer, imaged as the verifier (and the reverse), on a real registry.

cosign v3.1.3, built from its Go module (tools/peers.py), signs offline with a key pair it made:
the legacy `.sig` format, the new bundle format (docker-registry 2.8 has no referrers API, so cosign
writes the `sha256-<hex>` referrers tag index: the fallback imaged reads), and a SLSA provenance
attestation. imaged verifies each signature and refuses tampered copies; an attestation alone does
not satisfy a rule that wants signatures, but does one that requires that attestation (as
policy-controller and Kyverno treat attestation authorities), and only if its envelope verifies,
its subject is the image and its predicate satisfies the policy. `cosign save` writes the layout
Import reads, and Import verifies from it alone, registry stopped: the bundles and attestations it
keeps among its blobs (not in index.json) and its `.att` manifest. And cosign verifies what
`make demo`'s signer (tools/demo.py) produces.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import pathlib
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.foundation.test_import_rpc import chunked
from tests.policy.conftest import leftovers, no_leftovers
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.cosign import (
    IMAGE_KIND,
    OFFLINE_SIGN_FLAGS,
    REGISTRY_FLAGS,
    SIGS_KIND,
    SLSA_PROVENANCE,
    Cosign,
    layout_archive,
    layout_index,
)
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OCI_INDEX, OCI_MANIFEST, OciPusher, legacy_signature_tag, referrers_tag

ANN_SIGNATURE = "dev.cosignproject.cosign/signature"
SLSA_V02 = "https://slsa.dev/provenance/v0.2"  # what `cosign attest --type slsaprovenance` states
BUILDER_ID = SLSA_PROVENANCE["builder"]["id"]
BUILDER_POLICY = f'predicate.builder.id == "{BUILDER_ID}"'
PREDICATE_TYPE = "dev.sigstore.bundle.predicateType"
VERIFIED = "imaged.dev/verified"
ATTS_KIND = "dev.cosignproject.cosign/atts"


@dataclass
class Env:
    reg: Registry
    cosign: Cosign
    daemon: DaemonProcess
    oci: OciPusher
    second: Cosign  # the other party of the `two-party/*` rule (threshold 2)

    def image(self, repo: str, namespace: str = "cosign") -> tuple[str, str]:
        """A fresh runnable image `<namespace>/<repo>:v1`; returns (tag reference, digest reference)."""
        marker = f"{repo}-{uuid.uuid4().hex[:8]}"
        digest = archives.push(self.reg, f"{namespace}/{repo}", "v1", archives.simple_image(marker))
        return f"{self.reg.host}/{namespace}/{repo}:v1", f"{self.reg.host}/{namespace}/{repo}@{digest}"

    def verify(self, ref: str) -> image_pb2.ImageServiceVerifyResponse:
        return self.daemon.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)

    def refused(self, ref: str) -> str:
        with pytest.raises(grpc.RpcError) as e:
            self.verify(ref)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        return str(e.value.details())

    def tags(self, repo: str) -> list[str]:
        import urllib.request

        with urllib.request.urlopen(f"{self.reg.url}/v2/cosign/{repo}/tags/list", timeout=10) as r:
            return list(json.load(r)["tags"])


@pytest.fixture(scope="module")
def env(containerd: PrivateContainerd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    reg = Registry()
    cs = Cosign(tmp_path_factory.mktemp("cosign"))
    second = Cosign(tmp_path_factory.mktemp("cosign-second"))
    rules = [
        {"image": f"{reg.host}/cosign/*", "publicKey": {"certificate": cs.pub.read_text()}},
        {
            "image": f"{reg.host}/attested/*",
            "publicKey": {"certificate": cs.pub.read_text()},
            "attestations": [{"predicateType": SLSA_V02, "policy": BUILDER_POLICY}],
        },
        {
            "image": f"{reg.host}/two-party/*",
            "publicKey": [{"certificate": cs.pub.read_text()}, {"certificate": second.pub.read_text()}],
            "threshold": 2,
            "attestations": [{"predicateType": SLSA_V02, "policy": BUILDER_POLICY}],
        },
    ]
    d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
    d.start()
    yield Env(reg, cs, d, OciPusher(reg), second)
    d.stop()
    reg.close()


def digest_of(ref: str) -> str:
    return ref.split("@", 1)[1]


def repo_of(ref: str) -> str:
    return ref.split("/", 1)[1].split("@", 1)[0].split(":", 1)[0]


def referrers(env: Env, ref: str) -> list[dict]:  # type: ignore[type-arg]
    """The entries of the referrers tag index cosign wrote for `ref` (a digest reference)."""
    found = env.oci.get_manifest(repo_of(ref), referrers_tag(digest_of(ref)))
    assert found is not None and found.data is not None, "cosign wrote no referrers tag"
    return list(json.loads(found.data)["manifests"])


# -- cosign signs, imaged verifies --------------------------------------------------------------


def test_legacy_signature_made_by_cosign_verifies(env: Env) -> None:
    tag, ref = env.image("legacy")
    env.cosign.sign(ref, legacy=True)
    assert legacy_signature_tag(digest_of(ref)) in env.tags("legacy")
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert resp.digested_image_ref == ref
    assert "via legacy signature" in resp.message


def test_bundle_signature_made_by_cosign_verifies_from_the_referrers_tag(env: Env) -> None:
    tag, ref = env.image("bundle")
    env.cosign.sign(ref)
    tags = env.tags("bundle")
    assert referrers_tag(digest_of(ref)) in tags and legacy_signature_tag(digest_of(ref)) not in tags
    (entry,) = referrers(env, ref)
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert f"via bundle referrer with digest {entry['digest']}" in resp.message


def test_an_attestation_alone_does_not_satisfy_a_rule(env: Env) -> None:
    tag, ref = env.image("attested")
    env.cosign.attest(ref)
    details = env.refused(tag)
    assert "is an attestation" in details and "https://slsa.dev/provenance/v0.2" in details, details
    # The pinned cosign's own `verify` accepts this image (it lists the attestation as what it
    # verified): imaged is stricter, on purpose. Recorded in the README.
    r = env.cosign.verify(tag)
    assert r.returncode == 0 and "https://slsa.dev/provenance/v0.2" in r.stdout, r.stderr


def test_signature_and_attestation_side_by_side_are_told_apart(env: Env) -> None:
    tag, ref = env.image("both")
    env.cosign.attest(ref)
    env.cosign.sign(ref)
    entries = referrers(env, ref)
    assert len(entries) == 2
    kinds = {}
    for e in entries:
        manifest = env.oci.get_manifest(repo_of(ref), e["digest"])
        assert manifest is not None and manifest.data is not None
        kinds[json.loads(manifest.data)["annotations"][PREDICATE_TYPE]] = e["digest"]
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert f"via bundle referrer with digest {kinds['https://sigstore.dev/cosign/sign/v1']}" in resp.message


# -- tampered copies --------------------------------------------------------------------------


def _legacy_manifest(env: Env, ref: str) -> dict:  # type: ignore[type-arg]
    found = env.oci.get_manifest(repo_of(ref), legacy_signature_tag(digest_of(ref)))
    assert found is not None and found.data is not None
    return dict(json.loads(found.data))


def test_a_legacy_signature_copied_to_another_image_is_refused(env: Env) -> None:
    _, signed = env.image("legacy-src")
    env.cosign.sign(signed, legacy=True)
    tag, other = env.image("legacy-copy")
    manifest = _legacy_manifest(env, signed)
    repo = repo_of(other)
    for blob in (manifest["config"], *manifest["layers"]):
        env.oci.push_blob(repo, env.oci.get_blob(repo_of(signed), blob["digest"]), blob["mediaType"])
    body = json.dumps(manifest).encode()
    env.oci.put_manifest(repo, legacy_signature_tag(digest_of(other)), body, OCI_MANIFEST)
    details = env.refused(tag)
    assert f"signed payload is for image {digest_of(signed)}, not {digest_of(other)}" in details, details


def test_a_legacy_signature_with_a_changed_byte_is_refused(env: Env) -> None:
    tag, ref = env.image("legacy-flip")
    env.cosign.sign(ref, legacy=True)
    assert env.verify(tag).verified
    manifest = _legacy_manifest(env, ref)
    sig = bytearray(base64.b64decode(manifest["layers"][0]["annotations"][ANN_SIGNATURE]))
    sig[-1] ^= 0x01
    manifest["layers"][0]["annotations"][ANN_SIGNATURE] = base64.b64encode(bytes(sig)).decode()
    env.oci.put_manifest(
        repo_of(ref), legacy_signature_tag(digest_of(ref)), json.dumps(manifest).encode(), OCI_MANIFEST
    )
    # A new daemon: the verdict for this digest is cached by the session's.
    env.daemon.stop()
    env.daemon.start()
    details = env.refused(tag)
    assert "sig layer 0: signature does not verify with the rule's" in details, details


def _bundle_parts(env: Env, ref: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """(referrer manifest, bundle JSON) of the one bundle cosign wrote for `ref`."""
    (entry,) = referrers(env, ref)
    found = env.oci.get_manifest(repo_of(ref), entry["digest"])
    assert found is not None and found.data is not None
    manifest = json.loads(found.data)
    bundle = json.loads(env.oci.get_blob(repo_of(ref), manifest["layers"][0]["digest"]))
    return manifest, bundle


def _push_bundle_referrer(env: Env, ref: str, manifest: dict, bundle: dict) -> None:  # type: ignore[type-arg]
    """Replace `ref`'s referrers tag with one referrer: `manifest` carrying `bundle`, subject `ref`."""
    repo = repo_of(ref)
    data = json.dumps(bundle).encode()
    layer = env.oci.push_blob(repo, data, manifest["layers"][0]["mediaType"])
    env.oci.push_blob(repo, b"{}", manifest["config"]["mediaType"])
    manifest = {**manifest, "layers": [{**manifest["layers"][0], "digest": layer.digest, "size": layer.size}]}
    subject = env.oci.descriptor(repo, digest_of(ref))
    manifest["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    body = json.dumps(manifest).encode()
    pushed = env.oci.put_manifest(repo, "sha256:" + hashlib.sha256(body).hexdigest(), body, OCI_MANIFEST)
    entry = {"mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": pushed.size}
    entry["artifactType"] = manifest.get("artifactType", "")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
    env.oci.put_manifest(repo, referrers_tag(digest_of(ref)), index, OCI_INDEX)


def test_a_bundle_copied_to_another_image_is_refused(env: Env) -> None:
    _, signed = env.image("bundle-src")
    env.cosign.sign(signed)
    manifest, bundle = _bundle_parts(env, signed)
    tag, other = env.image("bundle-copy")
    _push_bundle_referrer(env, other, manifest, bundle)
    details = env.refused(tag)
    assert f"statement subjects ['{digest_of(signed)}'] do not include the image digest" in details, details


def test_a_bundle_with_a_changed_signature_byte_is_refused(env: Env) -> None:
    tag, ref = env.image("bundle-flip")
    env.cosign.sign(ref)
    manifest, bundle = _bundle_parts(env, ref)
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    _push_bundle_referrer(env, ref, manifest, bundle)
    details = env.refused(tag)
    assert "DSSE signature does not verify with the rule's" in details, details


# -- attestation-only images under a rule that requires attestations --------------------------------


def test_an_attestation_alone_satisfies_a_rule_that_requires_it(env: Env) -> None:
    tag, ref = env.image("only", namespace="attested")
    env.cosign.attest(ref)
    (entry,) = referrers(env, ref)  # no signature: the attestation is all the image carries
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert resp.digested_image_ref == ref
    assert f"attested via bundle referrer {entry['digest']}" in resp.message, resp.message
    assert f"attestation {SLSA_V02} by ECDSA" in resp.message, resp.message


def test_two_parties_attestations_of_one_requirement_meet_a_threshold_of_two(env: Env) -> None:
    """Each party's attestation of the one requirement counts for its signer: one party alone is
    refused under threshold 2, and so is one party attesting twice; both parties pass. (Three
    images: a verdict is cached per digest.)"""
    tag, ref = env.image("one", namespace="two-party")
    env.cosign.attest(ref)
    assert "1 of 2 authorities verified (threshold 2)" in env.refused(tag)
    tag, ref = env.image("twice", namespace="two-party")
    env.cosign.attest(ref)
    env.cosign.attest(ref, {**SLSA_PROVENANCE, "buildType": "https://builder.example.com/again@v1"})
    assert "1 of 2 authorities verified (threshold 2)" in env.refused(tag)
    tag, ref = env.image("both", namespace="two-party")
    env.cosign.attest(ref)
    env.second.attest(ref)
    resp = env.verify(tag)
    assert resp.verified, resp.message
    assert "2 of 2" in resp.message, resp.message


def test_an_unsigned_unattested_image_is_refused_under_an_attestation_rule(env: Env) -> None:
    tag, _ = env.image("bare", namespace="attested")
    details = env.refused(tag)
    assert "no signatures found" in details and f"no attestation of type {SLSA_V02} found" in details, details


def test_an_attestation_alone_whose_predicate_fails_the_policy_is_refused(env: Env) -> None:
    tag, ref = env.image("other-builder", namespace="attested")
    env.cosign.attest(ref, {**SLSA_PROVENANCE, "builder": {"id": "https://evil.example/builder"}})
    details = env.refused(tag)
    assert "predicate does not satisfy the policy" in details, details
    assert "nor do attestations stand for them" in details, details


def test_an_attestation_alone_by_another_key_is_refused(env: Env, tmp_path: pathlib.Path) -> None:
    tag, ref = env.image("other-key", namespace="attested")
    Cosign(tmp_path / "mallory").attest(ref)
    details = env.refused(tag)
    assert "DSSE signature does not verify with the rule's ECDSA" in details, details


def test_an_attestation_copied_from_another_image_is_refused(env: Env) -> None:
    _, attested = env.image("copy-src", namespace="attested")
    env.cosign.attest(attested)
    manifest, bundle = _bundle_parts(env, attested)
    tag, other = env.image("copy-dst", namespace="attested")
    _push_bundle_referrer(env, other, manifest, bundle)
    details = env.refused(tag)
    assert f"subjects ['{digest_of(attested)}'] do not include the image digest" in details, details


def test_an_altered_attestation_envelope_is_refused(env: Env) -> None:
    tag, ref = env.image("altered", namespace="attested")
    env.cosign.attest(ref, {**SLSA_PROVENANCE, "builder": {"id": "https://evil.example/builder"}})
    manifest, bundle = _bundle_parts(env, ref)
    # The statement is made to say what the policy wants after it was signed: the signature no
    # longer holds, so it is refused although the statement would now pass.
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["builder"]["id"] = BUILDER_ID
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    _push_bundle_referrer(env, ref, manifest, bundle)
    details = env.refused(tag)
    assert "DSSE signature does not verify with the rule's" in details, details
    assert "predicate does not satisfy" not in details, details


# -- cosign save -> Import ----------------------------------------------------------------------


def test_a_cosign_save_layout_imports(
    env: Env, containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    tag, ref = env.image("saved")
    env.cosign.sign(ref, legacy=True)
    env.cosign.sign(ref)
    layout = env.cosign.save(tag, tmp_path / "layout")
    kinds = [m.get("annotations", {}).get("kind") for m in layout_index(layout)["manifests"]]
    assert kinds.count(IMAGE_KIND) == 1 and kinds.count(SIGS_KIND) == 1, kinds
    blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    (entry,) = referrers(env, ref)
    assert entry["digest"].split(":")[1] in blobs, "the bundle referrer is in the layout's blobs"
    name = "import.test/cosign/saved:v1"
    imported = env.daemon.images.Import(chunked(SYSTEM, layout_archive(layout, name)), timeout=120)
    assert imported.name == name
    listed = {
        r.name: r.digest for r in env.daemon.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))
    }
    assert listed[name] == digest_of(ref), "the image, not its signature manifest, is what was recorded"
    out = containerd.ctr(
        "run", "--rm", name, f"cosign-saved-{uuid.uuid4().hex[:6]}", namespace="system"
    ).stdout
    assert out.startswith("saved-")
    env.daemon.images.Remove(
        image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=name), timeout=60
    )


@contextmanager
def registry_stopped(env: Env) -> Iterator[None]:
    """The registry stopped (a connection to it is refused), then started again on its port."""
    host = env.reg.host
    env.reg.stop()
    try:
        yield
    finally:
        env.reg.start()
        assert env.reg.host == host, "the registry came back on another port: later tests would miss it"


def import_archive(env: Env, data: bytes) -> str:
    return str(env.daemon.images.Import(chunked(SYSTEM, data), timeout=180).name)


def import_refused(env: Env, data: bytes, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as e:
        import_archive(env, data)
    assert e.value.code() == code, e.value.details()
    return str(e.value.details())


def recorded(env: Env) -> dict[str, image_pb2.ImageServiceListResponse]:
    return {r.name: r for r in env.daemon.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}


def remove(env: Env, name: str) -> None:
    env.daemon.images.Remove(
        image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=name), timeout=60
    )


def unlisted_referrer(env: Env, ref: str, layout: pathlib.Path) -> dict:  # type: ignore[type-arg]
    """The one referrer cosign wrote for `ref`: in the layout's blobs, not in its index.json."""
    (entry,) = referrers(env, ref)
    assert (layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).is_file()
    listed = [m["digest"] for m in layout_index(layout)["manifests"]]
    assert entry["digest"] not in listed, "cosign save listed the referrer: nothing left to find"
    return entry


def test_a_cosign_save_archive_of_a_bundle_signed_image_verifies_with_the_registry_stopped(
    env: Env, tmp_path: pathlib.Path
) -> None:
    """cosign 3's bundle (new format only, no `.sig`) is in the archive's blobs, not its
    index.json: Import finds it there as `policy test --offline` does, with no registry."""
    tag, ref = env.image("saved-bundle")
    env.cosign.sign(ref)
    layout = env.cosign.save(tag, tmp_path / "layout")
    entry = unlisted_referrer(env, ref, layout)
    name = tag  # the rule's repository: a verify rule decides the import
    with registry_stopped(env):
        assert import_archive(env, layout_archive(layout, name)) == name
    record = recorded(env)[name]
    assert record.digest == digest_of(ref)
    label = record.labels[VERIFIED]
    want = f"verified via bundle referrer with digest {entry['digest']} in the archive"
    assert label.startswith(want), label
    remove(env, name)


def _altered_bundle_layout(layout: pathlib.Path, referrer: str) -> None:
    """One signature byte of `referrer`'s bundle flipped, and the layout made consistent again:
    the bundle and the referrer manifest under their new digests (so the archive is well formed
    and only the signature is wrong)."""
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / referrer.split(":")[1]).read_bytes())
    layer = manifest["layers"][0]
    bundle = json.loads((blobs / layer["digest"].split(":")[1]).read_bytes())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    for old in (layer["digest"], referrer):
        (blobs / old.split(":")[1]).unlink()
    data = json.dumps(bundle).encode()
    (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    layer.update(digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))
    body = json.dumps(manifest).encode()
    (blobs / hashlib.sha256(body).hexdigest()).write_bytes(body)


def test_an_altered_bundle_in_a_cosign_save_archive_is_refused(
    env: Env, containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    before = leftovers(containerd)
    tag, ref = env.image("saved-altered")
    env.cosign.sign(ref)
    layout = env.cosign.save(tag, tmp_path / "layout")
    entry = unlisted_referrer(env, ref, layout)
    # Altered in place: its name no longer matches its content.
    blob = layout / "blobs" / "sha256" / entry["digest"].split(":")[1]
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b'"subject"', b'"subject" '))
    details = import_refused(env, layout_archive(layout, tag), grpc.StatusCode.INVALID_ARGUMENT)
    assert f"archive member blobs/sha256/{entry['digest'].split(':')[1]} does not match its name" in details
    blob.write_bytes(original)
    # Altered and renamed to its new digest: the archive is consistent, the signature is not. The
    # name's repository is one the registry never saw, so the archive's bundle is all there is.
    _altered_bundle_layout(layout, entry["digest"])
    name = f"{env.reg.host}/cosign/never-pushed-{uuid.uuid4().hex[:6]}:v1"
    details = import_refused(env, layout_archive(layout, name), grpc.StatusCode.PERMISSION_DENIED)
    assert "no signature in the archive satisfies rule 0" in details, details
    assert "in the archive: DSSE signature does not verify with the rule's" in details, details
    assert "nor in the registry" in details, details
    # And with no registry at all: not a verdict, an error; the archive's refusal is said.
    with registry_stopped(env):
        details = import_refused(env, layout_archive(layout, tag), grpc.StatusCode.UNAVAILABLE)
    assert "DSSE signature does not verify with the rule's" in details, details
    assert "asking the registry failed" in details, details
    listed = recorded(env)
    assert name not in listed and tag not in listed
    assert not [n for n, r in listed.items() if r.digest == digest_of(ref)]
    no_leftovers(containerd, before)


def test_an_attestation_in_a_cosign_save_archive_satisfies_the_rule_with_the_registry_stopped(
    env: Env, containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    """A rule requiring an attestation: `cosign attest`'s bundle, saved by `cosign save` among the
    blobs, satisfies it from the archive (it used to ask the registry whatever the archive held)."""
    before = leftovers(containerd)
    tag, ref = env.image("saved-attested", namespace="attested")
    env.cosign.attest(ref)
    layout = env.cosign.save(tag, tmp_path / "layout")
    entry = unlisted_referrer(env, ref, layout)
    with registry_stopped(env):
        assert import_archive(env, layout_archive(layout, tag)) == tag
    label = recorded(env)[tag].labels[VERIFIED]
    assert label.startswith(f"attested via bundle referrer {entry['digest']} in the archive"), label
    assert f"attestation {SLSA_V02} by ECDSA" in label, label
    remove(env, tag)

    # Its predicate failing the policy: refused from the archive, nothing recorded.
    tag, ref = env.image("saved-other-builder", namespace="attested")
    env.cosign.attest(ref, {**SLSA_PROVENANCE, "builder": {"id": "https://evil.example/builder"}})
    layout = env.cosign.save(tag, tmp_path / "other")
    with registry_stopped(env):
        details = import_refused(env, layout_archive(layout, tag), grpc.StatusCode.UNAVAILABLE)
    assert "predicate does not satisfy the policy" in details and "in the archive" in details, details
    assert tag not in recorded(env)
    no_leftovers(containerd, before)


def test_a_legacy_attestation_in_a_cosign_save_archive_satisfies_the_rule_with_the_registry_stopped(
    env: Env, tmp_path: pathlib.Path
) -> None:
    """`cosign attest --new-bundle-format=false`: the `.att` manifest, which cosign save lists
    (`kind: .../atts`), its DSSE envelope layer verified as the `.att` tag's would be."""
    tag, ref = env.image("saved-legacy-att", namespace="attested")
    predicate = tmp_path / "predicate.json"
    predicate.write_text(json.dumps(SLSA_PROVENANCE))
    env.cosign.run(
        "attest", "--key", str(env.cosign.key), "--type", "slsaprovenance", "--predicate", str(predicate),
        "--new-bundle-format=false", *OFFLINE_SIGN_FLAGS, *REGISTRY_FLAGS, ref,
    )  # fmt: skip
    layout = env.cosign.save(tag, tmp_path / "layout")
    kinds = [m.get("annotations", {}).get("kind") for m in layout_index(layout)["manifests"]]
    assert kinds == [IMAGE_KIND, ATTS_KIND], kinds
    with registry_stopped(env):
        assert import_archive(env, layout_archive(layout, tag)) == tag
    label = recorded(env)[tag].labels[VERIFIED]
    assert label.startswith("attested via legacy attestation sha256:") and "in the archive" in label, label
    remove(env, tag)


# -- the demo's signer, cosign verifies -------------------------------------------------------


def _demo() -> ModuleType:
    path = pathlib.Path(__file__).resolve().parents[2] / "tools" / "demo.py"
    spec = importlib.util.spec_from_file_location("imaged_tools_demo", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cosign_verifies_what_the_demo_signer_produces(env: Env, tmp_path: pathlib.Path) -> None:
    demo = _demo()
    key = demo.signing_key(tmp_path / "demo")
    digest = demo.push_signed(env.reg.host, key)
    ref = f"{env.reg.host}/{demo.REPO}:{demo.TAG}"
    r = env.cosign.verify(ref, tmp_path / "demo" / "cosign.pub")
    assert r.returncode == 0, r.stderr
    claims = json.loads(r.stdout)
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == digest
    assert claims[0]["critical"]["identity"]["docker-reference"] == f"{env.reg.host}/{demo.REPO}"
    # And it can fail: another key does not verify it.
    wrong = env.cosign.verify(ref, env.cosign.pub)
    assert wrong.returncode != 0
