"""Fulcio-like CA and CT log: short-lived code-signing leaves with an embedded SCT.

The leaf layout copies what Fulcio issues (empty subject, critical SAN, OIDC issuer in both the
legacy 1.3.6.1.4.1.57264.1.1 raw extension and the 1.3.6.1.4.1.57264.1.8 UTF8String one, one
precertificate SCT) so that sigstore-python's checks apply unchanged.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from .keys import derive_ec_key, key_id, sign

OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_OTHERNAME_SAN = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")

SanKind = Literal["email", "uri", "othername"]
# Fulcio's CI claims (sigstore/fulcio docs/oid-info.md), written independently of imaged's table.
CLAIM_OIDS = {
    "buildSignerURI": "9",
    "runnerEnvironment": "11",
    "sourceRepositoryURI": "12",
    "sourceRepositoryDigest": "13",
    "sourceRepositoryRef": "14",
    "buildConfigURI": "18",
    "buildTrigger": "20",
}


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_utf8string(value: str) -> bytes:
    raw = value.encode()
    return b"\x0c" + _der_length(len(raw)) + raw


def der_octet_string(value: bytes) -> bytes:
    return b"\x04" + _der_length(len(value)) + value


def _serial(seed: bytes, label: str) -> int:
    # Positive and at most 20 octets, as RFC 5280 (and the WebPKI policy in `cryptography`) demand.
    return int.from_bytes(hashlib.sha256(seed + b"serial" + label.encode()).digest()[:16], "big") | 1


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class CTLog:
    """A CT log key: signs RFC 6962 precertificate SCTs."""

    key: ec.EllipticCurvePrivateKey

    @property
    def log_id(self) -> bytes:
        return key_id(self.key.public_key())

    def sct_list_extension(
        self, tbs_precert: bytes, issuer_key: ec.EllipticCurvePublicKey, timestamp: datetime
    ) -> bytes:
        """The extnValue of 1.3.6.1.4.1.11129.2.4.2: OCTET STRING { SignedCertificateTimestampList }."""
        ts_ms = int(timestamp.timestamp() * 1000)
        extensions = b""
        # digitally-signed struct, RFC 6962 3.2: version, signature_type, timestamp, entry_type,
        # PreCert{issuer_key_hash, tbs_certificate<1..2^24-1>}, extensions<0..2^16-1>.
        signed = (
            struct.pack("!BBQH", 0, 0, ts_ms, 1)
            + key_id(issuer_key)
            + len(tbs_precert).to_bytes(3, "big")
            + tbs_precert
            + struct.pack("!H", len(extensions))
            + extensions
        )
        signature = sign(self.key, signed)
        sct = (
            struct.pack("!B", 0)
            + self.log_id
            + struct.pack("!QH", ts_ms, len(extensions))
            + extensions
            + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
            + signature
        )
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        return der_octet_string(sct_list)


@dataclass(frozen=True)
class Leaf:
    """A Fulcio-style signing certificate with its private key: the keyless signer."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]  # intermediate(s) then root
    identity: str
    issuer: str | None

    @property
    def pem(self) -> bytes:
        return pem(self.certificate)

    @property
    def der(self) -> bytes:
        return der(self.certificate)

    @property
    def chain_pem(self) -> bytes:
        """Intermediates then root, as cosign writes `dev.sigstore.cosign/chain`."""
        return b"".join(pem(c) for c in self.chain)

    @property
    def verifier_pem(self) -> bytes:
        """What Rekor records as the verifier: the leaf PEM."""
        return self.pem

    def sign(self, data: bytes) -> bytes:
        return sign(self.private_key, data)


class FulcioCA:
    """Root + intermediate (ECDSA P-256) and a CT log, like Fulcio's production chain."""

    def __init__(self, seed: bytes, now: datetime, ct_log: CTLog, org: str = "imaged.test") -> None:
        self._seed = seed
        self._now = now
        self._counter = 0
        self.ct_log = ct_log
        self.root_key = derive_ec_key(seed, "fulcio-root")
        self.intermediate_key = derive_ec_key(seed, "fulcio-intermediate")
        self.not_before = now - timedelta(days=1)
        not_after = now + timedelta(days=3650)
        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, "sigstore"),
            ]
        )
        inter_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, "sigstore-intermediate"),
            ]
        )
        root_pub = self.root_key.public_key()
        self.root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_pub)
            .serial_number(_serial(seed, "root"))
            .not_valid_before(self.not_before)
            .not_valid_after(not_after)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False)
            .sign(self.root_key, hashes.SHA256(), ecdsa_deterministic=True)
        )
        inter_pub = self.intermediate_key.public_key()
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(inter_name)
            .issuer_name(root_name)
            .public_key(inter_pub)
            .serial_number(_serial(seed, "intermediate"))
            .not_valid_before(self.not_before)
            .not_valid_after(not_after)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False)
            .sign(self.root_key, hashes.SHA256(), ecdsa_deterministic=True)
        )

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        return (self.intermediate, self.root)

    def issue(
        self,
        identity: str,
        issuer: str | None,
        *,
        san_kind: SanKind | None = None,
        not_before: datetime | None = None,
        validity: timedelta = timedelta(minutes=10),
        issuer_v1: str | Literal[False] | None = None,
        issuer_v2: str | Literal[False] | None = None,
        code_signing: bool = True,
        sct: bool = True,
        ct_log: CTLog | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        claims: dict[str, str] | None = None,
    ) -> Leaf:
        """Issue a leaf for `identity` (SAN) and OIDC `issuer`.

        `issuer_v1` / `issuer_v2` override the value written in each issuer extension (False: omit
        that extension), for tests where they disagree. `ct_log` signs the SCT with another log
        key (negative test). Validity defaults to 10 minutes starting 1 minute before `now`.
        """
        self._counter += 1
        label = f"leaf-{self._counter}"
        leaf_key = key or derive_ec_key(self._seed, label)
        start = not_before if not_before is not None else self._now - timedelta(minutes=1)
        kind = san_kind or ("email" if "@" in identity and "://" not in identity else "uri")
        san: x509.GeneralName
        if kind == "email":
            san = x509.RFC822Name(identity)
        elif kind == "uri":
            san = x509.UniformResourceIdentifier(identity)
        else:
            san = x509.OtherName(OID_OTHERNAME_SAN, der_utf8string(identity))
        v1 = issuer if issuer_v1 is None else issuer_v1
        v2 = issuer if issuer_v2 is None else issuer_v2
        leaf_pub = leaf_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(leaf_pub)
            .serial_number(_serial(self._seed, label))
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        )
        if v1:
            builder = builder.add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, v1.encode()), False)
        if v2:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OID_ISSUER_V2, der_utf8string(v2)), False
            )
        for name, value in (claims or {}).items():
            suffix = name if name.isdigit() else CLAIM_OIDS[name]
            oid = ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{suffix}")
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, der_utf8string(value)), False)
        precert = builder.sign(self.intermediate_key, hashes.SHA256(), ecdsa_deterministic=True)
        cert = precert
        if sct:
            log = ct_log or self.ct_log
            tbs = precert.tbs_certificate_bytes
            ext = log.sct_list_extension(tbs, self.intermediate_key.public_key(), start)
            cert = builder.add_extension(x509.UnrecognizedExtension(OID_SCT_LIST, ext), False).sign(
                self.intermediate_key, hashes.SHA256(), ecdsa_deterministic=True
            )
            # The SCT covers the TBS without the SCT list: what a verifier rebuilds must match.
            assert cert.tbs_precertificate_bytes == tbs
        return Leaf(cert, leaf_key, self.chain, identity, issuer)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
