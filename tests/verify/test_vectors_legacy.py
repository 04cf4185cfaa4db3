"""Legacy keyless cosign signatures (A1-A5, public-good Fulcio + Rekor SET) and X1 (private PKI).

Every valid vector verifies against the public-good trusted root, and every altered copy is
refused with a message that says what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sigstore.errors import VerificationError

from imaged.verify.config import KeylessRule
from imaged.verify.material import ANN_BUNDLE, ANN_CERTIFICATE, SimpleSigning
from imaged.verify.trust import TrustRoot, load_trust_root_file
from imaged.verify.verifiers import KeylessVerifier
from tests.verify.vectors import (
    PUBLIC_GOOD_ROOT,
    digest_of,
    flip,
    flip_b64,
    legacy_signature,
    vdir,
    vector,
    with_annotation,
)

OTHER_DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def trust() -> TrustRoot:
    return load_trust_root_file(PUBLIC_GOOD_ROOT)


def rule_for(vid: str, **override: Any) -> KeylessRule:
    exp = vector(vid)["expected"]
    fields: dict[str, Any] = {"subject": exp["identity_san"]}
    if exp["oidc_issuer"]:
        fields["issuer"] = exp["oidc_issuer"]
    else:
        fields["issuerRegex"] = "^$"  # A5 (2021) has no issuer extension
    fields.update(override)
    return KeylessRule.model_validate(fields)


def sig_of(vid: str) -> SimpleSigning:
    return legacy_signature(vdir(vid))


def refused(trust: TrustRoot, sig: SimpleSigning, digest: str, rule: KeylessRule) -> str:
    with pytest.raises(VerificationError) as info:
        KeylessVerifier(rule, trust).verify(sig, digest)
    return str(info.value)


@pytest.mark.parametrize("vid", ["A1", "A2", "A3", "A4", "A5"])
def test_valid_legacy_keyless_vectors_verify(trust: TrustRoot, vid: str) -> None:
    who = KeylessVerifier(rule_for(vid), trust).verify(sig_of(vid), digest_of(vid))
    exp = vector(vid)["expected"]
    assert exp["identity_san"] in who
    assert f"Rekor log index {exp['rekor_logIndex']}" in who


def test_a5_without_issuer_needs_a_regex_that_accepts_none(trust: TrustRoot) -> None:
    assert KeylessVerifier(rule_for("A5", issuerRegex=".*"), trust).verify(sig_of("A5"), digest_of("A5"))
    msg = refused(
        trust,
        sig_of("A5"),
        digest_of("A5"),
        rule_for("A5", issuerRegex=None, issuer="https://github.com/login/oauth"),
    )
    assert (
        msg
        == "certificate issuer mismatch: expected 'https://github.com/login/oauth', found no issuer extension"
    )


def test_a2_payload_blob_is_the_signed_payload() -> None:
    d = vdir("A2")
    blob = next((d / "blobs").iterdir()).read_bytes()
    assert blob == (d / "payload.json").read_bytes()


@pytest.mark.parametrize("vid", ["A1", "A2", "A3", "A4", "A5"])
def test_wrong_image_digest_is_refused(trust: TrustRoot, vid: str) -> None:
    msg = refused(trust, sig_of(vid), OTHER_DIGEST, rule_for(vid))
    assert msg == f"signed payload is for image {digest_of(vid)}, not {OTHER_DIGEST}"


@pytest.mark.parametrize("vid", ["A1", "A2", "A3", "A4", "A5"])
def test_flipped_payload_is_refused(trust: TrustRoot, vid: str) -> None:
    sig = sig_of(vid)
    tampered = SimpleSigning(flip(sig.payload), sig.annotations)
    msg = refused(trust, tampered, digest_of(vid), rule_for(vid))
    assert msg == "Rekor entry records a different payload hash than the signed payload"


@pytest.mark.parametrize("vid", ["A1", "A2", "A3", "A4", "A5"])
def test_flipped_signature_is_refused(trust: TrustRoot, vid: str) -> None:
    sig = sig_of(vid)
    tampered = with_annotation(
        sig,
        "dev.cosignproject.cosign/signature",
        flip_b64(sig.annotations["dev.cosignproject.cosign/signature"]),
    )
    assert (
        refused(trust, tampered, digest_of(vid), rule_for(vid)) == "Rekor entry records a different signature"
    )


def test_other_certificate_is_refused(trust: TrustRoot) -> None:
    other = (vdir("A4") / "certificate.pem").read_text()
    tampered = with_annotation(sig_of("A1"), ANN_CERTIFICATE, other)
    assert (
        refused(trust, tampered, digest_of("A1"), rule_for("A1"))
        == "Rekor entry records a different signing certificate"
    )


def test_garbled_certificate_is_refused(trust: TrustRoot) -> None:
    pem = sig_of("A1").annotations[ANN_CERTIFICATE]
    lines = pem.splitlines()
    lines[3] = lines[3][:10] + ("A" if lines[3][10] != "A" else "B") + lines[3][11:]
    tampered = with_annotation(sig_of("A1"), ANN_CERTIFICATE, "\n".join(lines) + "\n")
    msg = refused(trust, tampered, digest_of("A1"), rule_for("A1"))
    assert msg in (
        "certificate annotation is not a PEM certificate",
        "Rekor entry records a different signing certificate",
    )


def _set(vid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sig_of(vid).annotations[ANN_BUNDLE])
    return doc


@pytest.mark.parametrize("vid", ["A1", "A5"])
def test_flipped_set_is_refused(trust: TrustRoot, vid: str) -> None:
    doc = _set(vid)
    doc["SignedEntryTimestamp"] = flip_b64(doc["SignedEntryTimestamp"], 10)
    tampered = with_annotation(sig_of(vid), ANN_BUNDLE, json.dumps(doc))
    msg = refused(trust, tampered, digest_of(vid), rule_for(vid))
    assert msg == "Rekor SignedEntryTimestamp does not verify with the key of https://rekor.sigstore.dev"


@pytest.mark.parametrize("field", ["integratedTime", "logIndex"])
def test_altered_set_payload_is_refused(trust: TrustRoot, field: str) -> None:
    doc = _set("A1")
    doc["Payload"][field] += 1
    tampered = with_annotation(sig_of("A1"), ANN_BUNDLE, json.dumps(doc))
    msg = refused(trust, tampered, digest_of("A1"), rule_for("A1"))
    assert "SignedEntryTimestamp does not verify" in msg


def test_set_from_an_unknown_log_is_refused(trust: TrustRoot) -> None:
    doc = _set("A1")
    doc["Payload"]["logID"] = "ab" * 32
    tampered = with_annotation(sig_of("A1"), ANN_BUNDLE, json.dumps(doc))
    msg = refused(trust, tampered, digest_of("A1"), rule_for("A1"))
    assert (
        msg.startswith("Rekor entry is from log abababababababab…, which the trusted root")
        and "does not list" in msg
    )


def test_missing_set_is_refused(trust: TrustRoot) -> None:
    tampered = with_annotation(sig_of("A1"), ANN_BUNDLE, None)
    msg = refused(trust, tampered, digest_of("A1"), rule_for("A1"))
    assert msg.startswith("signature has no Rekor bundle (SET)")


def test_missing_certificate_is_refused(trust: TrustRoot) -> None:
    tampered = with_annotation(sig_of("A1"), ANN_CERTIFICATE, None)
    msg = refused(trust, tampered, digest_of("A1"), rule_for("A1"))
    assert msg == "signature has no certificate (it is key-signed), and the rule is keyless"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"subject": "someone@example.com"},
            "certificate subject mismatch: expected 'someone@example.com', found ['mitr@redhat.com']",
        ),
        (
            {"issuer": "https://accounts.google.com"},
            "certificate issuer mismatch: expected 'https://accounts.google.com', "
            "found 'https://github.com/login/oauth'",
        ),
        (
            {"subject": None, "subjectRegex": "^admin@redhat\\.com$"},
            "certificate subject mismatch: expected a match of /^admin@redhat\\.com$/, "
            "found ['mitr@redhat.com']",
        ),
        (
            {"issuer": None, "issuerRegex": "^https://accounts\\.google\\.com$"},
            "certificate issuer mismatch: expected a match of /^https://accounts\\.google\\.com$/, "
            "found 'https://github.com/login/oauth'",
        ),
        # exact and regex together: both must hold
        (
            {"subjectRegex": "^nobody@"},
            "certificate subject mismatch: expected a match of /^nobody@/, found ['mitr@redhat.com']",
        ),
    ],
)
def test_wrong_identity_is_refused(trust: TrustRoot, override: dict[str, Any], message: str) -> None:
    assert refused(trust, sig_of("A1"), digest_of("A1"), rule_for("A1", **override)) == message


@pytest.mark.parametrize(
    "override",
    [
        {"subject": None, "subjectRegex": "^mitr@redhat\\.com$"},
        {"subject": None, "subjectRegex": "@redhat\\.com$"},
        {"subject": None, "subjectRegex": "redhat"},  # Go MatchString: a search, hence the warning
        {"issuer": None, "issuerRegex": "^https://github\\.com/login/oauth$"},
    ],
)
def test_regex_identities_match_by_search(trust: TrustRoot, override: dict[str, Any]) -> None:
    assert "mitr@redhat.com" in KeylessVerifier(rule_for("A1", **override), trust).verify(
        sig_of("A1"), digest_of("A1")
    )


def test_public_good_signature_is_refused_by_a_private_trust_root(tmp_path: Any) -> None:
    from tests.support.sigstore import PrivateSigstore

    private = load_trust_root_file(PrivateSigstore().write_trusted_root(tmp_path / "root.json"))
    msg = refused(private, sig_of("A1"), digest_of("A1"), rule_for("A1"))
    assert "which the trusted root" in msg and "does not list" in msg


def test_x1_private_pki_does_not_verify_as_keyless(trust: TrustRoot) -> None:
    sig = legacy_signature(vdir("X1"))
    rule = KeylessRule.model_validate({"issuerRegex": ".*", "subject": "qiwan@redhat.com"})
    msg = refused(trust, sig, digest_of("X1"), rule)
    assert msg.startswith("signature has no Rekor bundle (SET)")


def test_x1_with_a_public_good_set_still_needs_a_fulcio_chain(trust: TrustRoot) -> None:
    """X1's certificate grafted onto A1's genuine SET: the entry binding refuses it."""
    sig = legacy_signature(vdir("X1"))
    grafted = with_annotation(sig, ANN_BUNDLE, sig_of("A1").annotations[ANN_BUNDLE])
    rule = KeylessRule.model_validate({"issuerRegex": ".*", "subject": "qiwan@redhat.com"})
    assert refused(trust, grafted, digest_of("X1"), rule) == (
        "Rekor entry records a different payload hash than the signed payload"
    )
