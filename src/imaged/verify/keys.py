"""Static public keys: loading the configured PEM and checking signatures with `cryptography`.

sigstore-python only verifies certificate-based material, so key-signed images (cosign `--key`)
are checked here. cosign signs with SHA-256 whatever the curve (P-384 keys included), so SHA-256
is tried first and the curve's own hash second; RSA is PKCS#1 v1.5 as cosign and KMS keys use.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_MIN_RSA_BITS = 2048


class UnusableKey(ValueError):
    """A configured key that cannot be used; the message says why."""


def load_public_key(pem: str) -> PublicKey:
    """The key of a `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` PEM block (the
    rule's `publicKey.certificate`): the forms people paste from cosign, openssl and KMS consoles."""
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem)]
    if not blocks:
        raise UnusableKey(
            "no PEM block found (expected BEGIN PUBLIC KEY, BEGIN RSA PUBLIC KEY or BEGIN CERTIFICATE)"
        )
    if len(blocks) > 1:
        raise UnusableKey(f"expected one PEM block, found {len(blocks)}")
    block = blocks[0].encode()
    kind = blocks[0][len("-----BEGIN ") : blocks[0].index("-----", 5)]
    key: object
    try:
        if kind == "CERTIFICATE":
            key = x509.load_pem_x509_certificate(block).public_key()
        elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            key = serialization.load_pem_public_key(block)
        else:
            raise UnusableKey(
                f"unsupported PEM block {kind!r} (expected PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)"
            )
    except (ValueError, UnsupportedAlgorithm) as e:
        if isinstance(e, UnusableKey):
            raise
        raise UnusableKey(f"cannot parse {kind} PEM: {e}") from None
    return check_key(key)


def check_key(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
            raise UnusableKey(f"unsupported elliptic curve {key.curve.name} (use P-256, P-384 or P-521)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise UnusableKey(f"RSA key of {key.key_size} bits is too small (at least {_MIN_RSA_BITS})")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise UnusableKey(f"unsupported key type {type(key).__name__} (use ECDSA, RSA or Ed25519)")


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: PublicKey) -> str:
    """What a bundle's `publicKey.hint` holds for this key: base64(sha256(SPKI DER))."""
    return base64.b64encode(hashlib.sha256(spki_der(key)).digest()).decode()


def describe(key: PublicKey) -> str:
    """A short, stable name for messages: algorithm and the first bytes of the key hash."""
    fp = hashlib.sha256(spki_der(key)).hexdigest()[:16]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name} key sha256:{fp}…"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size} key sha256:{fp}…"
    return f"Ed25519 key sha256:{fp}…"


def _ec_hashes(key: ec.EllipticCurvePublicKey) -> list[hashes.HashAlgorithm]:
    own: hashes.HashAlgorithm = {384: hashes.SHA384(), 521: hashes.SHA512()}.get(
        key.curve.key_size, hashes.SHA256()
    )
    return [hashes.SHA256()] if isinstance(own, hashes.SHA256) else [hashes.SHA256(), own]


def verify_signature(key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True if `signature` over `data` verifies with `key` (hash chosen as cosign does)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return True
        for algorithm in _ec_hashes(key):
            try:
                key.verify(signature, data, ec.ECDSA(algorithm))
                return True
            except InvalidSignature:
                continue
        return False
    except (InvalidSignature, ValueError):
        return False


def verify_prehashed_sha256(key: PublicKey, signature: bytes, digest: bytes) -> bool:
    """True if `signature` is over the SHA-256 `digest` (a bundle's messageSignature)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            return False  # Ed25519 signs messages, never prehashes
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return True
    except (InvalidSignature, ValueError):
        return False


def decode_b64(value: str, what: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional; line breaks ignored as Go does)."""
    v = value.replace("\r", "").replace("\n", "").strip()
    try:
        return base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not valid base64") from None
