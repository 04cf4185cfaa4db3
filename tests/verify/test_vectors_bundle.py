"""Sigstore bundles (B1-B5): keyless cosign 3 bundles via sigstore-python, B4 with a static key.

B5 is a `cosign attest` bundle: a valid signature over an in-toto statement whose predicate is an
attestation, not `cosign sign`'s. Decision: an attestation is a claim *about* an image (SBOM,
provenance, a scan), not its signer's approval to run it, so it never satisfies a signature
rule; the refusal says so. Its cryptography is shown to verify, so the refusal is that decision
and nothing else.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sigstore.errors import VerificationError
from sigstore.models import Bundle

from imaged.verify.config import KeylessRule
from imaged.verify.identity import identity_policy
from imaged.verify.keys import load_public_key
from imaged.verify.material import BundleSignature
from imaged.verify.trust import TrustRoot, load_trust_root_file
from imaged.verify.verifiers import KeylessVerifier, StaticKeyVerifier
from tests.verify.vectors import PUBLIC_GOOD_ROOT, digest_of, flip_b64, vdir, vector

OTHER_DIGEST = "sha256:" + "0" * 64
GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/docker/github-builder-experimental/.github/workflows/build.yml@refs/heads/build-reusable-workflow"


@pytest.fixture(scope="module")
def trust() -> TrustRoot:
    return load_trust_root_file(PUBLIC_GOOD_ROOT)


def bundle_bytes(vid: str) -> bytes:
    return (vdir(vid) / "bundle.sigstore.json").read_bytes()


def bundle_doc(vid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bundle_bytes(vid))
    return doc


def as_sig(doc: dict[str, Any] | bytes) -> BundleSignature:
    return BundleSignature(doc if isinstance(doc, bytes) else json.dumps(doc).encode(), where="test bundle")


def rule(**fields: Any) -> KeylessRule:
    base: dict[str, Any] = {"issuer": GITHUB, "subject": WORKFLOW}
    base.update(fields)
    return KeylessRule.model_validate(base)


def refused(verifier: Any, sig: BundleSignature, digest: str) -> str:
    with pytest.raises(VerificationError) as info:
        verifier.verify(sig, digest)
    return str(info.value)


@pytest.mark.parametrize("vid", ["B1", "B2", "B3"])
def test_keyless_bundles_verify(trust: TrustRoot, vid: str) -> None:
    who = KeylessVerifier(rule(), trust).verify(as_sig(bundle_bytes(vid)), digest_of(vid))
    assert who.startswith(f"{WORKFLOW} (issuer {GITHUB}), Rekor log index ")


@pytest.mark.parametrize("vid", ["B1", "B2", "B3"])
def test_signed_manifest_hashes_to_the_digest(vid: str) -> None:
    import hashlib

    d = vdir(vid)
    manifest = (d / vector(vid)["files"]["signed_manifest"]).read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest_of(vid)


def test_keyless_bundle_with_anchored_regexes(trust: TrustRoot) -> None:
    r = rule(
        issuer=None,
        issuerRegex=r"^https://token\.actions\.githubusercontent\.com$",
        subject=None,
        subjectRegex=r"^https://github\.com/docker/github-builder-experimental/\.github/workflows/build\.yml@refs/heads/",
    )
    assert KeylessVerifier(r, trust).verify(as_sig(bundle_bytes("B1")), digest_of("B1"))


@pytest.mark.parametrize("vid", ["B1", "B2", "B3"])
def test_wrong_digest_is_refused(trust: TrustRoot, vid: str) -> None:
    msg = refused(KeylessVerifier(rule(), trust), as_sig(bundle_bytes(vid)), OTHER_DIGEST)
    assert msg == f"statement subjects ['{digest_of(vid)}'] do not include the image digest {OTHER_DIGEST}"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"subject": "https://github.com/evil/repo/.github/workflows/x.yml@refs/heads/main"},
            "certificate subject mismatch: expected "
            f"'https://github.com/evil/repo/.github/workflows/x.yml@refs/heads/main', found ['{WORKFLOW}']",
        ),
        (
            {"issuer": "https://accounts.google.com"},
            f"certificate issuer mismatch: expected 'https://accounts.google.com', found '{GITHUB}'",
        ),
        (
            {"subject": None, "subjectRegex": "^https://github\\.com/siderolabs/"},
            "certificate subject mismatch: expected a match of /^https://github\\.com/siderolabs//, "
            f"found ['{WORKFLOW}']",
        ),
        (
            {"issuer": None, "issuerRegex": "^https://gitlab\\.com$"},
            f"certificate issuer mismatch: expected a match of /^https://gitlab\\.com$/, found '{GITHUB}'",
        ),
    ],
)
def test_wrong_identity_is_refused(trust: TrustRoot, fields: dict[str, Any], message: str) -> None:
    assert (
        refused(KeylessVerifier(rule(**fields), trust), as_sig(bundle_bytes("B1")), digest_of("B1"))
        == message
    )


def test_flipped_dsse_payload_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B1")
    doc["dsseEnvelope"]["payload"] = flip_b64(doc["dsseEnvelope"]["payload"], 40)
    assert refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B1")) == "DSSE: invalid signature"


def test_payload_naming_another_digest_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B1")
    stmt = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(digest_of("B1")[7:].encode(), b"0" * 64)
    doc["dsseEnvelope"]["payload"] = base64.b64encode(stmt).decode()
    assert refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B1")) == "DSSE: invalid signature"


def test_flipped_dsse_signature_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B2")
    doc["dsseEnvelope"]["signatures"][0]["sig"] = flip_b64(doc["dsseEnvelope"]["signatures"][0]["sig"], 20)
    assert refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B2")) == "DSSE: invalid signature"


def test_flipped_certificate_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B3")
    cert = doc["verificationMaterial"]["certificate"]
    cert["rawBytes"] = flip_b64(cert["rawBytes"], len(base64.b64decode(cert["rawBytes"])) - 20)
    msg = refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B3"))
    assert msg.startswith("failed to build timestamp certificate chain")


def test_flipped_inclusion_proof_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B1")
    entry = doc["verificationMaterial"]["tlogEntries"][0]
    entry["inclusionProof"]["hashes"][0] = flip_b64(entry["inclusionProof"]["hashes"][0], 0)
    msg = refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B1"))
    assert msg.startswith("invalid log entry")


def test_bundle_without_tlog_entry_is_refused(trust: TrustRoot) -> None:
    doc = bundle_doc("B1")
    doc["verificationMaterial"]["tlogEntries"] = []
    msg = refused(KeylessVerifier(rule(), trust), as_sig(doc), digest_of("B1"))
    assert msg == "bundle is not usable: expected exactly one log entry in bundle"


def test_not_json_is_refused(trust: TrustRoot) -> None:
    assert (
        refused(KeylessVerifier(rule(), trust), as_sig(b"\x00not json"), digest_of("B1"))
        == "bundle is not JSON"
    )


def test_b5_attestation_is_not_an_image_signature(trust: TrustRoot) -> None:
    r = KeylessRule.model_validate(
        {"issuer": "https://github.com/login/oauth", "subject": "cody@soyland.com"}
    )
    msg = refused(KeylessVerifier(r, trust), as_sig(bundle_bytes("B5")), digest_of("B5"))
    assert msg == (
        "bundle is an attestation (predicateType 'https://cosign.sigstore.dev/attestation/v1'), "
        "not an image signature (predicateType 'https://sigstore.dev/cosign/sign/v1')"
    )
    # ...although its cryptography and identity verify, and it names the image:
    ptype, payload = trust.verifier.verify_dsse(Bundle.from_json(bundle_bytes("B5")), identity_policy(r))
    assert ptype == "application/vnd.in-toto+json"
    assert json.loads(payload)["subject"][0]["digest"]["sha256"] == digest_of("B5")[7:]


def test_b4_key_bundle_verifies_with_its_key() -> None:
    d = vdir("B4")
    key = load_public_key((d / "cosign.pub").read_text())
    assert (
        StaticKeyVerifier(key)
        .verify(as_sig(bundle_bytes("B4")), digest_of("B4"))
        .startswith("ECDSA secp256r1 key")
    )


def test_b4_refused_with_the_wrong_key() -> None:
    d = vdir("B4")
    key = load_public_key((d / "wrong.pub").read_text())
    msg = refused(StaticKeyVerifier(key), as_sig(bundle_bytes("B4")), digest_of("B4"))
    assert msg.startswith("DSSE signature does not verify with the rule's ECDSA secp256r1 key")
    assert "the bundle names key hint fnjDrI7ue5FV5s2ImCVduM26jN1pF7a4FBRNcNjNhr8=" in msg


def test_b4_refused_for_another_digest() -> None:
    key = load_public_key((vdir("B4") / "cosign.pub").read_text())
    msg = refused(StaticKeyVerifier(key), as_sig(bundle_bytes("B4")), OTHER_DIGEST)
    assert msg == f"statement subjects ['{digest_of('B4')}'] do not include the image digest {OTHER_DIGEST}"


def test_b4_flipped_payload_refused() -> None:
    key = load_public_key((vdir("B4") / "cosign.pub").read_text())
    doc = bundle_doc("B4")
    doc["dsseEnvelope"]["payload"] = flip_b64(doc["dsseEnvelope"]["payload"], 30)
    assert refused(StaticKeyVerifier(key), as_sig(doc), digest_of("B4")).startswith(
        "DSSE signature does not verify"
    )


def test_b4_key_bundle_is_refused_by_a_keyless_rule(trust: TrustRoot) -> None:
    msg = refused(KeylessVerifier(rule(), trust), as_sig(bundle_bytes("B4")), digest_of("B4"))
    assert msg == "bundle is not usable: expected certificate in bundle"


def test_keyless_bundle_is_refused_by_a_key_rule() -> None:
    key = load_public_key((vdir("B4") / "cosign.pub").read_text())
    msg = refused(StaticKeyVerifier(key), as_sig(bundle_bytes("B1")), digest_of("B1"))
    assert msg.startswith("DSSE signature does not verify with the rule's ECDSA secp256r1 key")


@pytest.mark.parametrize(
    ("policy", "satisfied"),
    [('predicate.Data == "{\\"foo\\": \\"bar\\"}\\n"', True), ('predicate.Data.contains("baz")', False)],
)
def test_b5_real_cosign_attest_bundle_as_an_attestation(
    trust: TrustRoot, policy: str, satisfied: bool
) -> None:
    """The real `cosign attest` bundle (B5) under an attestation requirement: signature, identity,
    Statement v0.1 subject and the CEL policy over its predicate; a false policy is named."""
    from imaged.verify.attest import check_requirement
    from imaged.verify.cel import CelEvaluator
    from imaged.verify.config import AttestationRule

    r = KeylessRule.model_validate(
        {"issuer": "https://github.com/login/oauth", "subject": "cody@soyland.com"}
    )
    requirement = AttestationRule.model_validate(
        {"predicateType": "https://cosign.sigstore.dev/attestation/v1", "policy": policy}
    )
    material = BundleSignature(bundle_bytes("B5"), where="B5", predicate_type=requirement.predicate_type)
    cel = CelEvaluator()
    try:
        result = check_requirement(
            requirement,
            (KeylessVerifier(r, trust),),
            [material],
            digest_of("B5"),
            "127.0.0.1:60943/repo",
            cel,
        )
        assert result.satisfied == satisfied, result.reasons
        if satisfied:
            assert (
                result.message
                and "cody@soyland.com (issuer https://github.com/login/oauth)" in result.message
            )
        else:
            assert result.reasons == (f"B5: predicate does not satisfy the policy {policy!r}",)
        other = check_requirement(
            requirement, (KeylessVerifier(r, trust),), [material], OTHER_DIGEST, "r", cel
        )
        assert not other.satisfied and "do not include the image digest" in other.reasons[0]
    finally:
        cel.close()
