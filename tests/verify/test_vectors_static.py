"""Key-signed cosign signatures (C1-C6): ECDSA P-256/P-384 and RSA, legacy layers, no tlog needed."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
from sigstore.errors import VerificationError

from imaged.verify.keys import load_public_key
from imaged.verify.material import SimpleSigning
from imaged.verify.verifiers import StaticKeyVerifier
from tests.verify.vectors import digest_of, flip, flip_b64, legacy_signature, vdir

OTHER_DIGEST = "sha256:" + "0" * 64


def key_verifier(path: pathlib.Path) -> StaticKeyVerifier:
    return StaticKeyVerifier(load_public_key(path.read_text()))


def manifest_digest(d: pathlib.Path) -> str:
    return "sha256:" + hashlib.sha256((d / "image-manifest.json").read_bytes()).hexdigest()


def sig(d: pathlib.Path, payload: str = "payload.json", signature: str = "signature.b64") -> SimpleSigning:
    return legacy_signature(d, payload=payload, signature=signature, certificate=None, chain=None, rekor=None)


def refused(v: StaticKeyVerifier, s: SimpleSigning, digest: str) -> str:
    with pytest.raises(VerificationError) as info:
        v.verify(s, digest)
    return str(info.value)


# -- C1: containers/image fixtures, including its negative cases -----------------------------------


@pytest.mark.parametrize(
    ("sub", "payload", "signature"),
    [
        ("valid", "payload.json", "signature.b64"),
        ("valid-2", "signature-1.payload.json", "signature-1.signature.b64"),
        ("valid-2", "signature-2.payload.json", "signature-2.signature.b64"),
        ("valid-with-tag", "payload.json", "signature.b64"),
        ("mixed", "signature-2.payload.json", "signature-2.signature.b64"),
    ],
)
def test_c1_valid(sub: str, payload: str, signature: str) -> None:
    d = vdir("C1") / sub
    assert manifest_digest(d) == digest_of("C1")
    v = key_verifier(vdir("C1") / "cosign.pub")
    assert v.verify(sig(d, payload, signature), manifest_digest(d)).startswith("ECDSA secp256r1 key sha256:")


def test_c1_mixed_first_signature_is_by_another_key() -> None:
    d = vdir("C1") / "mixed"
    msg = refused(
        key_verifier(vdir("C1") / "cosign.pub"),
        sig(d, "signature-1.payload.json", "signature-1.signature.b64"),
        manifest_digest(d),
    )
    assert msg.startswith("signature does not verify with the rule's ECDSA secp256r1 key sha256:")


@pytest.mark.parametrize("sub", ["neg-modified-manifest", "neg-manifest-digest-error"])
def test_c1_signature_for_another_manifest_is_refused(sub: str) -> None:
    d = vdir("C1") / sub
    digest = manifest_digest(d)
    assert digest != digest_of("C1")
    msg = refused(key_verifier(vdir("C1") / "cosign.pub"), sig(d), digest)
    assert msg == f"signed payload is for image {digest_of('C1')}, not {digest}"


def test_c1_other_attachment_is_not_a_signature() -> None:
    d = vdir("C1") / "neg-other-attachment"
    msg = refused(key_verifier(vdir("C1") / "cosign.pub"), sig(d), manifest_digest(d))
    assert msg.startswith("signature does not verify with the rule's ECDSA secp256r1 key")


def test_c1_wrong_key() -> None:
    d = vdir("C1") / "valid"
    msg = refused(key_verifier(vdir("C1") / "cosign2.pub"), sig(d), manifest_digest(d))
    assert msg.startswith("signature does not verify with the rule's ECDSA secp256r1 key")


def test_c1_flipped_payload_and_signature() -> None:
    d = vdir("C1") / "valid"
    v = key_verifier(vdir("C1") / "cosign.pub")
    good = sig(d)
    assert refused(v, SimpleSigning(flip(good.payload), good.annotations), digest_of("C1")).startswith(
        "signature does not verify"
    )
    bad_sig = {
        "dev.cosignproject.cosign/signature": flip_b64(
            good.annotations["dev.cosignproject.cosign/signature"], 12
        )
    }
    assert refused(v, SimpleSigning(good.payload, bad_sig), digest_of("C1")).startswith(
        "signature does not verify"
    )
    assert refused(v, SimpleSigning(good.payload, {}), digest_of("C1")) == (
        "layer has no dev.cosignproject.cosign/signature annotation"
    )


# -- C2: key-signed with a Rekor SET (ignored for key rules) ---------------------------------------


def test_c2_key_with_rekor() -> None:
    d = vdir("C2")
    assert key_verifier(d / "cosign2.pub").verify(sig(d), digest_of("C2"))
    assert refused(key_verifier(vdir("C1") / "cosign.pub"), sig(d), digest_of("C2")).startswith(
        "signature does not verify"
    )
    assert refused(key_verifier(d / "cosign2.pub"), sig(d), OTHER_DIGEST) == (
        f"signed payload is for image {digest_of('C2')}, not {OTHER_DIGEST}"
    )


# -- C3: connaisseur's alice/bob/charlie ------------------------------------------------------------

C3_SINGLE = "sha256:071bf7a986f1ca9cb2a1f0bc8392822a7777f90d58f2d2c6f271913e08de7c81"
C3_MULTI = "sha256:bfec161fecb0a887df7cb85e4da327c65986ccda7060cf3cd92171c6c90d7533"


@pytest.mark.parametrize("who", ["alice", "bob", "charlie", "default"])
def test_c3_single_is_alice_only(who: str) -> None:
    d = vdir("C3")
    v = key_verifier(d / "keys" / f"{who}.pub")
    s = sig(d / "single-alice")
    if who == "alice":
        assert v.verify(s, C3_SINGLE)
    else:
        assert refused(v, s, C3_SINGLE).startswith("signature does not verify")


@pytest.mark.parametrize(("layer", "who"), [(0, "alice"), (1, "bob"), (2, "charlie")])
def test_c3_multi_layers(layer: int, who: str) -> None:
    d = vdir("C3")
    s = sig(d / "multi-alice-bob-charlie", f"layer{layer}.payload.json", f"layer{layer}.signature.b64")
    for other in ("alice", "bob", "charlie", "default"):
        v = key_verifier(d / "keys" / f"{other}.pub")
        if other == who:
            assert v.verify(s, C3_MULTI)
        else:
            assert refused(v, s, C3_MULTI).startswith("signature does not verify")


# -- C4: RSA-2048/3072 PKCS#1 v1.5, ECDSA P-256 and P-384 (both with SHA-256) ----------------------

C4_KEYS = ["rsa2048", "rsa3072", "ecdsa-p256", "ecdsa-p384"]


@pytest.mark.parametrize("name", C4_KEYS)
def test_c4_algorithms(name: str) -> None:
    d = vdir("C4")
    s = sig(d, signature=f"{name}.signature.b64")
    assert key_verifier(d / f"{name}.pub").verify(s, digest_of("C4"))
    for other in C4_KEYS:
        if other != name:
            assert refused(key_verifier(d / f"{other}.pub"), s, digest_of("C4")).startswith(
                "signature does not verify"
            )
    assert refused(
        key_verifier(d / f"{name}.pub"), SimpleSigning(flip(s.payload), s.annotations), digest_of("C4")
    ).startswith("signature does not verify")


# -- C5: inspektor-gadget, legacy tag and cosign 2 OCI 1.1 referrer ---------------------------------

C5 = {
    "legacy": "sha256:20296fb8a8c8a97808229625945da73f5f4d5843800317ead8c203081156cc9c",
    "oci11": "sha256:2f096beb75baadce98f52500552f1d7eabf19f4c35007869350d6f496084e992",
}


@pytest.mark.parametrize("form", ["legacy", "oci11"])
def test_c5(form: str) -> None:
    d = vdir("C5")
    s = sig(d / form)
    assert key_verifier(d / "cosign.pub").verify(s, C5[form])
    assert refused(key_verifier(d / "wrong.pub"), s, C5[form]).startswith("signature does not verify")
    other = C5["oci11" if form == "legacy" else "legacy"]
    assert (
        refused(key_verifier(d / "cosign.pub"), s, other)
        == f"signed payload is for image {C5[form]}, not {other}"
    )


# -- C6: sigstore-rs, key1 without tlog, key2 with a 2021 SET ---------------------------------------


@pytest.mark.parametrize("name", ["key1", "key2"])
def test_c6(name: str) -> None:
    d = vdir("C6")
    s = sig(d, signature=f"{name}.signature.b64")
    assert key_verifier(d / f"{name}.pub").verify(s, digest_of("C6"))
    other = "key2" if name == "key1" else "key1"
    assert refused(key_verifier(d / f"{other}.pub"), s, digest_of("C6")).startswith(
        "signature does not verify"
    )


def test_x1_key_of_its_certificate_verifies_as_a_key_rule() -> None:
    """`publicKey.certificate` takes a CERTIFICATE PEM and uses its key (no identity, no chain)."""
    d = vdir("X1")
    v = key_verifier(d / "certificate.pem")
    assert v.verify(sig(d), digest_of("X1")).startswith("RSA-")
