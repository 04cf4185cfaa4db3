"""Keys for the private Sigstore: derived from a seed so a test session is reproducible."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# Order of the P-256 group: private scalars must lie in [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def derive_ec_key(seed: bytes, label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key that depends only on (seed, label): same session seed, same keys."""
    digest = hashlib.sha256(seed + b"\x00" + label.encode()).digest()
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> bytes:
    """RFC 6962 key ID (sha256 of the DER SPKI): Rekor logID, CT log ID, bundle publicKey hint."""
    return hashlib.sha256(spki_der(key)).digest()


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 (DER, RFC 6979 deterministic) or RSA PKCS#1 v1.5 SHA-256: what cosign produces."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class StaticKey:
    """A cosign-style signing key pair (`cosign generate-key-pair`), no certificate."""

    private_key: PrivateKey
    kind: Literal["ecdsa-p256", "rsa-2048"]

    @classmethod
    def ecdsa(cls, seed: bytes = b"imaged-tests", label: str = "static-key") -> StaticKey:
        return cls(derive_ec_key(seed, label), "ecdsa-p256")

    @classmethod
    def rsa(cls) -> StaticKey:
        """RSA cannot be derived from a seed with `cryptography`: this one is random."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2048")

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def public_pem(self) -> bytes:
        """PEM `PUBLIC KEY`: what a verifier configuration carries."""
        return public_pem(self.public_key)

    @property
    def hint(self) -> str:
        """Bundle `verificationMaterial.publicKey.hint`: base64(sha256(SPKI DER))."""
        return base64.b64encode(key_id(self.public_key)).decode()

    def sign(self, data: bytes) -> bytes:
        return sign(self.private_key, data)
