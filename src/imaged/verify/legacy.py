"""Legacy keyless cosign signatures: simple-signing payload, Fulcio certificate, Rekor SET.

sigstore-python cannot take these (it requires an inclusion proof, which legacy signatures do
not carry), so the steps are ours, in the order cosign applies them: the SET proves the entry
and its time; the entry must be this signature; the signature must verify with the
certificate; the certificate must chain to Fulcio at that time with a valid SCT; the identity
must satisfy the rule; and the payload must name this image.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from sigstore.errors import VerificationError
from sigstore.verify.policy import VerificationPolicy

from imaged.oci import jsondoc
from imaged.verify import identity as ident
from imaged.verify.certs import verify_fulcio_certificate
from imaged.verify.keys import PublicKey, UnusableKey, check_key, decode_b64, verify_signature
from imaged.verify.material import (
    ANN_BUNDLE,
    ANN_CERTIFICATE,
    ANN_SIGNATURE,
    Envelope,
    Opened,
    Signed,
    SimpleSigning,
)
from imaged.verify.payload import check_simple_signing, pae
from imaged.verify.rekor import LogEvidence, check_entry_binds, check_envelope_entry_binds, verify_set
from imaged.verify.signers import keyless_signer
from imaged.verify.trust import TrustRoot


def signature_bytes(sig: SimpleSigning) -> bytes:
    value = sig.annotations.get(ANN_SIGNATURE)
    if not value:
        raise VerificationError(f"layer has no {ANN_SIGNATURE} annotation")
    try:
        return decode_b64(value, "signature annotation")
    except ValueError as e:
        raise VerificationError(str(e)) from None


def _certificate(annotations: Mapping[str, str], missing: str) -> x509.Certificate:
    cert_pem = annotations.get(ANN_CERTIFICATE)
    if not cert_pem:
        raise VerificationError(missing)
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise VerificationError("certificate annotation is not a PEM certificate") from None


def _logged(annotations: Mapping[str, str], trust: TrustRoot, missing: str) -> LogEvidence:
    """The Rekor SET of the annotations, checked against the root's log keys."""
    set_annotation = annotations.get(ANN_BUNDLE)
    if not set_annotation:
        raise VerificationError(missing)
    return verify_set(set_annotation, trust)


def _key(cert: x509.Certificate) -> PublicKey:
    try:
        return check_key(cert.public_key())
    except UnusableKey as e:
        raise VerificationError(f"certificate key: {e}") from None


def _signer(
    cert: x509.Certificate,
    evidence: LogEvidence,
    trust: TrustRoot,
    policy: VerificationPolicy,
    signature: bytes,
) -> Signed:
    """Who signed, once the chain holds at the logged time and the identity is the policy's."""
    verify_fulcio_certificate(cert, trust, evidence.integrated_time)
    policy.verify(cert)
    who = f"{ident.describe(cert)}, Rekor log index {evidence.log_index}"
    return Signed(who, keyless_signer(cert), signature)


def verify_legacy_keyless(
    sig: SimpleSigning, digest: str, trust: TrustRoot, policy: VerificationPolicy
) -> Signed:
    """Verify one legacy keyless signature; return who signed. Raises VerificationError."""
    signature = signature_bytes(sig)
    cert = _certificate(
        sig.annotations, "signature has no certificate (it is key-signed), and the rule is keyless"
    )
    evidence = _logged(
        sig.annotations,
        trust,
        "signature has no Rekor bundle (SET); a keyless signature needs transparency log evidence",
    )
    check_entry_binds(evidence.body, sig.payload, signature, cert)
    if not verify_signature(_key(cert), signature, sig.payload):
        raise VerificationError("signature does not verify over the payload with the certificate's key")
    signed = _signer(cert, evidence, trust, policy, signature)
    check_simple_signing(sig.payload, digest)
    return signed


def open_legacy_keyless_envelope(env: Envelope, trust: TrustRoot, policy: VerificationPolicy) -> Opened:
    """A legacy keyless attestation (`.att` layer): the envelope's signature with the certificate,
    the SET, the log entry recording this payload and certificate, the chain at the logged time,
    and the identity. Returns (who, payloadType, payload)."""
    try:
        doc = jsondoc.loads(env.envelope)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("attestation layer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("payloadType"), str):
        raise VerificationError("attestation layer is not a DSSE envelope")
    sigs = doc.get("signatures")
    if not isinstance(sigs, list) or not sigs or not isinstance(sigs[0], dict):
        raise VerificationError("DSSE envelope has no signatures")
    try:
        payload = decode_b64(str(doc.get("payload", "")), "DSSE payload")
        signature = decode_b64(str(sigs[0].get("sig", "")), "DSSE signature")
    except ValueError as e:
        raise VerificationError(str(e)) from None
    cert = _certificate(
        env.annotations, "attestation has no certificate (it is key-signed), and the authority is keyless"
    )
    evidence = _logged(
        env.annotations,
        trust,
        "attestation has no Rekor bundle (SET); keyless needs transparency log evidence",
    )
    check_envelope_entry_binds(evidence.body, payload, cert)
    if not verify_signature(_key(cert), signature, pae(doc["payloadType"], payload)):
        raise VerificationError("DSSE signature does not verify with the certificate's key")
    return Opened(_signer(cert, evidence, trust, policy, signature), doc["payloadType"], payload)
