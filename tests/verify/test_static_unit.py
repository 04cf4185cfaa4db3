"""Static-key verification with keys made here: formats the vectors lack (message signatures,
Ed25519, RSA bundles) and payloads that are validly signed but say the wrong thing."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore.errors import VerificationError

from imaged.verify.keys import key_hint, load_public_key
from imaged.verify.material import ANN_SIGNATURE, BundleSignature, SimpleSigning
from imaged.verify.payload import pae
from imaged.verify.verifiers import StaticKeyVerifier

DIGEST = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()
OTHER = "sha256:" + "1" * 64
Private = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def keys() -> dict[str, Private]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa": rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


KEYS = keys()


def sign(key: Private, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def verifier(key: Private) -> StaticKeyVerifier:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return StaticKeyVerifier(load_public_key(pem.decode()))


def simple_signing(digest: str) -> bytes:
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "r.io/app"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()


def statement(digest: str, predicate: str = "https://sigstore.dev/cosign/sign/v1") -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {"sha256": digest[7:]}}],
            "predicateType": predicate,
        }
    ).encode()


def dsse_bundle(
    key: Private, payload: bytes, payload_type: str = "application/vnd.in-toto+json"
) -> BundleSignature:
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "x"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(sign(key, pae(payload_type, payload))).decode()}],
        },
    }
    return BundleSignature(json.dumps(doc).encode())


def message_bundle(key: Private, digest: bytes, signed: bytes | None = None) -> BundleSignature:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(signed or digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        sig = key.sign(signed or digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    doc = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "publicKey": {
                "hint": key_hint(
                    load_public_key(
                        key.public_key()
                        .public_bytes(
                            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                        )
                        .decode()
                    )
                )
            }
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
            "signature": base64.b64encode(sig).decode(),
        },
    }
    return BundleSignature(json.dumps(doc).encode())


def refused(v: StaticKeyVerifier, s: Any, digest: str = DIGEST) -> str:
    with pytest.raises(VerificationError) as info:
        v.verify(s, digest)
    return str(info.value)


@pytest.mark.parametrize("name", list(KEYS))
def test_simple_signing_with_every_key_type(name: str) -> None:
    key = KEYS[name]
    payload = simple_signing(DIGEST)
    s = SimpleSigning(payload, {ANN_SIGNATURE: base64.b64encode(sign(key, payload)).decode()})
    assert verifier(key).verify(s, DIGEST)
    assert refused(verifier(KEYS["p256" if name != "p256" else "rsa"]), s).startswith(
        "signature does not verify"
    )
    assert refused(verifier(key), s, OTHER) == f"signed payload is for image {DIGEST}, not {OTHER}"


@pytest.mark.parametrize("name", list(KEYS))
def test_dsse_bundle_with_every_key_type(name: str) -> None:
    key = KEYS[name]
    b = dsse_bundle(key, statement(DIGEST))
    assert verifier(key).verify(b, DIGEST)
    assert refused(verifier(key), b, OTHER) == (
        f"statement subjects ['{DIGEST}'] do not include the image digest {OTHER}"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"this is not a signature", "signed payload is not JSON"),
        (
            b'{"critical": {"type": "cosign container image signature"}}',
            "signed payload names no image digest (critical.image.docker-manifest-digest)",
        ),
        (
            b'{"critical": {"type": "something else", "image": {"docker-manifest-digest": "%s"}}}'
            % DIGEST.encode(),
            "signed payload type is 'something else', not 'cosign container image signature'",
        ),
        (b'{"optional": {}}', "signed payload has no 'critical' section (not a cosign signature payload)"),
    ],
)
def test_validly_signed_payloads_that_do_not_name_the_image(payload: bytes, message: str) -> None:
    key = KEYS["p256"]
    s = SimpleSigning(payload, {ANN_SIGNATURE: base64.b64encode(sign(key, payload)).decode()})
    assert refused(verifier(key), s) == message


def test_old_cosign_capitalised_keys_are_accepted() -> None:
    key = KEYS["p256"]
    payload = json.dumps(
        {
            "Critical": {
                "Identity": {"docker-reference": "r"},
                "Image": {"Docker-manifest-digest": DIGEST},
                "Type": "cosign container image signature",
            }
        }
    ).encode()
    s = SimpleSigning(payload, {ANN_SIGNATURE: base64.b64encode(sign(key, payload)).decode()})
    assert verifier(key).verify(s, DIGEST)


@pytest.mark.parametrize(
    ("payload", "payload_type", "message"),
    [
        (
            statement(DIGEST, "https://slsa.dev/provenance/v1"),
            "application/vnd.in-toto+json",
            "bundle is an attestation (predicateType 'https://slsa.dev/provenance/v1'), "
            "not an image signature (predicateType 'https://sigstore.dev/cosign/sign/v1')",
        ),
        (
            statement(DIGEST),
            "text/plain",
            "DSSE payload type is 'text/plain', not 'application/vnd.in-toto+json'",
        ),
        (b"[]", "application/vnd.in-toto+json", "DSSE payload is not an in-toto statement"),
        (b"{", "application/vnd.in-toto+json", "DSSE payload is not JSON"),
    ],
)
def test_validly_signed_dsse_that_is_not_an_image_signature(
    payload: bytes, payload_type: str, message: str
) -> None:
    key = KEYS["p256"]
    assert refused(verifier(key), dsse_bundle(key, payload, payload_type)) == message


@pytest.mark.parametrize("name", ["p256", "p384", "rsa"])
def test_message_signature_bundle_over_the_manifest_digest(name: str) -> None:
    key = KEYS[name]
    raw = bytes.fromhex(DIGEST[7:])
    assert verifier(key).verify(message_bundle(key, raw), DIGEST)
    assert refused(verifier(key), message_bundle(key, raw), OTHER) == (
        f"message signature is over {DIGEST}, not the image digest {OTHER}"
    )
    forged = message_bundle(key, raw, signed=bytes.fromhex(OTHER[7:]))  # digest field lies
    assert refused(verifier(key), forged).startswith("message signature does not verify with the rule's")


def test_message_signature_with_wrong_key_names_the_hint() -> None:
    b = message_bundle(KEYS["p256"], bytes.fromhex(DIGEST[7:]))
    msg = refused(verifier(KEYS["p384"]), b)
    assert msg.startswith("message signature does not verify with the rule's ECDSA secp384r1 key")
    assert "the bundle names key hint" in msg


def test_not_a_bundle() -> None:
    v = verifier(KEYS["p256"])
    assert refused(v, BundleSignature(b"nope")) == "bundle is not JSON"
    assert refused(v, BundleSignature(b'{"mediaType": "x"}')) == "not a Sigstore bundle (mediaType)"
    assert refused(v, BundleSignature(b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}')) == (
        "bundle has neither dsseEnvelope nor messageSignature"
    )
