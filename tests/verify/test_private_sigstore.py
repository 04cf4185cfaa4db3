"""Keyless verification against a private Sigstore (tests.support.sigstore): the certificate,
SCT, SET and identity checks the public vectors cannot exercise (they cannot be re-signed)."""

from __future__ import annotations

import json
import pathlib
from datetime import timedelta
from typing import Any

import pytest
from sigstore.errors import VerificationError

from imaged.verify.config import KeylessRule
from imaged.verify.material import ANN_BUNDLE, BundleSignature, SimpleSigning
from imaged.verify.trust import TrustRoot, load_trust_root_file
from imaged.verify.verifiers import KeylessVerifier
from tests.support.sigstore import Leaf, PrivateSigstore, intoto_statement
from tests.support.sigstore.certs import CTLog
from tests.support.sigstore.formats import sha256_digest

DIGEST = sha256_digest(b"an image manifest")
OTHER = sha256_digest(b"another image manifest")
REF = "127.0.0.1:5000/test/app"
EMAIL, ISSUER = "alice@example.com", "https://accounts.example.com"


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def trust(ps: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> TrustRoot:
    return load_trust_root_file(ps.write_trusted_root(tmp_path_factory.mktemp("t") / "trusted_root.json"))


def rule(**fields: Any) -> KeylessRule:
    base: dict[str, Any] = {"issuer": ISSUER, "subject": EMAIL}
    base.update(fields)
    return KeylessRule.model_validate(base)


def legacy(ps: PrivateSigstore, leaf: Leaf, digest: str = DIGEST, **kw: Any) -> SimpleSigning:
    s = ps.sign_legacy(digest, REF, leaf, **kw)
    return SimpleSigning(s.payload, s.annotations, where="private legacy")


def bundle(ps: PrivateSigstore, leaf: Leaf, digest: str = DIGEST, **kw: Any) -> BundleSignature:
    return BundleSignature(ps.sign_bundle(digest, leaf, **kw).json_bytes, where="private bundle")


def refused(trust: TrustRoot, sig: Any, r: KeylessRule | None = None, digest: str = DIGEST) -> str:
    with pytest.raises(VerificationError) as info:
        KeylessVerifier(r or rule(), trust).verify(sig, digest)
    return str(info.value)


FORMATS = ["legacy", "bundle"]
# legacy: the SET's log is checked first; bundle: sigstore-python checks the chain first
EXPECTED_FOREIGN = {
    "legacy": "Rekor entry is from log ",
    "bundle": "failed to build timestamp certificate chain",
}


def make(fmt: str, ps: PrivateSigstore, leaf: Leaf, **kw: Any) -> Any:
    return legacy(ps, leaf, **kw) if fmt == "legacy" else bundle(ps, leaf, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
def test_private_keyless_verifies(ps: PrivateSigstore, trust: TrustRoot, fmt: str) -> None:
    who = KeylessVerifier(rule(), trust).verify(make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER)), DIGEST)
    assert who.startswith(f"{EMAIL} (issuer {ISSUER}), Rekor log index ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_private_signatures_do_not_verify_against_public_good(ps: PrivateSigstore, fmt: str) -> None:
    from imaged.verify.trust import embedded_public_good

    msg = refused(embedded_public_good(), make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER)))
    assert msg.startswith(EXPECTED_FOREIGN[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_foreign_sigstore_is_refused(trust: TrustRoot, fmt: str) -> None:
    foreign = PrivateSigstore(seed=b"someone else")
    msg = refused(trust, make(fmt, foreign, foreign.issue_leaf(EMAIL, ISSUER)))
    assert msg.startswith(EXPECTED_FOREIGN[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("kind", "identity"),
    [
        ("email", "bob@example.com"),
        ("uri", "https://github.com/acme/app/.github/workflows/r.yml@refs/heads/main"),
        ("othername", "bob!example.com"),
    ],
)
def test_san_kinds(ps: PrivateSigstore, trust: TrustRoot, fmt: str, kind: str, identity: str) -> None:
    leaf = ps.issue_leaf(identity, ISSUER, san_kind=kind)
    sig = make(fmt, ps, leaf)
    assert KeylessVerifier(rule(subject=identity), trust).verify(sig, DIGEST).startswith(identity)
    assert refused(trust, sig, rule(subject="x@y")) == (
        f"certificate subject mismatch: expected 'x@y', found [{identity!r}]"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_issuer_extensions(ps: PrivateSigstore, trust: TrustRoot, fmt: str) -> None:
    only_v1 = make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER, issuer_v2=False))
    only_v2 = make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER, issuer_v1=False))
    for sig in (only_v1, only_v2):
        assert KeylessVerifier(rule(), trust).verify(sig, DIGEST)
    disagree = make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER, issuer_v1="https://evil.example.com"))
    assert refused(trust, disagree) == (
        f"certificate's two OIDC issuer extensions disagree ('{ISSUER}' vs 'https://evil.example.com')"
    )
    none = make(fmt, ps, ps.issue_leaf(EMAIL, None))
    assert (
        refused(trust, none) == f"certificate issuer mismatch: expected '{ISSUER}', found no issuer extension"
    )
    assert KeylessVerifier(rule(issuer=None, issuerRegex="^$"), trust).verify(none, DIGEST)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_digest(ps: PrivateSigstore, trust: TrustRoot, fmt: str) -> None:
    msg = refused(trust, make(fmt, ps, ps.issue_leaf(EMAIL, ISSUER)), digest=OTHER)
    assert msg in (
        f"signed payload is for image {DIGEST}, not {OTHER}",
        f"statement subjects ['{DIGEST}'] do not include the image digest {OTHER}",
    )


def test_legacy_without_sct_from_a_current_ca_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    msg = refused(trust, legacy(ps, ps.issue_leaf(EMAIL, ISSUER, sct=False)))
    assert msg == "certificate has no embedded SCT (certificate transparency proof)"


def test_legacy_sct_from_an_unknown_log_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    rogue = CTLog(ps.rogue_key())
    msg = refused(trust, legacy(ps, ps.issue_leaf(EMAIL, ISSUER, ct_log=rogue)))
    assert msg.startswith("certificate's embedded SCT does not verify")


def test_legacy_without_sct_from_a_retired_ca_is_tolerated(
    ps: PrivateSigstore, tmp_path: pathlib.Path
) -> None:
    """Like the 2021 public-good CA (vector A5): certificates from before embedded SCTs."""
    doc = ps.trusted_root()
    doc["certificateAuthorities"][0]["validFor"]["end"] = (ps.now + timedelta(days=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    (tmp_path / "root.json").write_text(json.dumps(doc))
    retired = load_trust_root_file(tmp_path / "root.json")
    assert KeylessVerifier(rule(), retired).verify(
        legacy(ps, ps.issue_leaf(EMAIL, ISSUER, sct=False)), DIGEST
    )


def test_legacy_signed_outside_the_certificate_validity_is_refused(
    ps: PrivateSigstore, trust: TrustRoot
) -> None:
    msg = refused(trust, legacy(ps, ps.issue_leaf_outside_validity(EMAIL, ISSUER)))
    assert msg.startswith("certificate does not chain to a Fulcio CA of the trusted root")
    assert ps.now.isoformat() in msg


def test_legacy_integrated_after_the_certificate_expired_is_refused(
    ps: PrivateSigstore, trust: TrustRoot
) -> None:
    late = ps.now + timedelta(hours=1)
    msg = refused(trust, legacy(ps, ps.issue_leaf(EMAIL, ISSUER), integrated_time=late))
    assert msg.startswith("certificate does not chain to a Fulcio CA") and late.isoformat() in msg


def test_legacy_without_code_signing_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    msg = refused(trust, legacy(ps, ps.issue_leaf(EMAIL, ISSUER, code_signing=False)))
    assert msg == "certificate extended key usage lacks codeSigning"


def test_legacy_set_signed_by_another_key_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    msg = refused(trust, legacy(ps, ps.issue_leaf(EMAIL, ISSUER), set_key=ps.rogue_key()))
    assert msg == "Rekor SignedEntryTimestamp does not verify with the key of https://rekor.imaged.test"


def test_legacy_without_tlog_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    sig = legacy(ps, ps.issue_leaf(EMAIL, ISSUER), tlog=False)
    assert ANN_BUNDLE not in sig.annotations
    assert refused(trust, sig).startswith("signature has no Rekor bundle (SET)")


def test_legacy_rekor_body_of_another_signature_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    leaf = ps.issue_leaf(EMAIL, ISSUER)
    mine, other = legacy(ps, leaf), legacy(ps, leaf, digest=OTHER)
    grafted = SimpleSigning(mine.payload, {**mine.annotations, ANN_BUNDLE: other.annotations[ANN_BUNDLE]})
    assert refused(trust, grafted) == "Rekor entry records a different payload hash than the signed payload"


def test_bundle_checkpoint_signed_by_another_key_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    msg = refused(trust, bundle(ps, ps.issue_leaf(EMAIL, ISSUER), checkpoint_key=ps.rogue_key()))
    assert msg.startswith("invalid log entry")


def test_bundle_statement_for_another_image_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    sig = bundle(ps, ps.issue_leaf(EMAIL, ISSUER), statement=intoto_statement(OTHER))
    assert refused(trust, sig) == f"statement subjects ['{OTHER}'] do not include the image digest {DIGEST}"


def test_bundle_without_sct_is_refused(ps: PrivateSigstore, trust: TrustRoot) -> None:
    msg = refused(trust, bundle(ps, ps.issue_leaf(EMAIL, ISSUER, sct=False)))
    assert msg.startswith("failed to verify SCT on signing certificate")
