"""Legacy keyless cosign signatures: simple-signing payload, Fulcio certificate, Rekor SET.

sigstore-python cannot take these (it requires an inclusion proof, which legacy signatures do
not carry), so the steps are ours, in the order cosign applies them: the SET proves the entry
and its time; the entry must be this signature; the signature must verify with the
certificate; the certificate must chain to Fulcio at that time with a valid SCT; the identity
must satisfy the rule; and the payload must name this image.
"""

from __future__ import annotations

from cryptography import x509
from sigstore.errors import VerificationError
from sigstore.verify.policy import VerificationPolicy

from imaged.verify import identity as ident
from imaged.verify.certs import verify_fulcio_certificate
from imaged.verify.keys import UnusableKey, check_key, decode_b64, verify_signature
from imaged.verify.material import ANN_BUNDLE, ANN_CERTIFICATE, ANN_SIGNATURE, SimpleSigning
from imaged.verify.payload import check_simple_signing
from imaged.verify.rekor import check_entry_binds, verify_set
from imaged.verify.trust import TrustRoot


def signature_bytes(sig: SimpleSigning) -> bytes:
    value = sig.annotations.get(ANN_SIGNATURE)
    if not value:
        raise VerificationError(f"layer has no {ANN_SIGNATURE} annotation")
    try:
        return decode_b64(value, "signature annotation")
    except ValueError as e:
        raise VerificationError(str(e)) from None


def verify_legacy_keyless(
    sig: SimpleSigning, digest: str, trust: TrustRoot, policy: VerificationPolicy
) -> str:
    """Verify one legacy keyless signature; return who signed. Raises VerificationError."""
    signature = signature_bytes(sig)
    cert_pem = sig.annotations.get(ANN_CERTIFICATE)
    if not cert_pem:
        raise VerificationError("signature has no certificate (it is key-signed), and the rule is keyless")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise VerificationError("certificate annotation is not a PEM certificate") from None
    set_annotation = sig.annotations.get(ANN_BUNDLE)
    if not set_annotation:
        raise VerificationError(
            "signature has no Rekor bundle (SET); a keyless signature needs transparency log evidence"
        )
    evidence = verify_set(set_annotation, trust)
    check_entry_binds(evidence.body, sig.payload, signature, cert)
    try:
        key = check_key(cert.public_key())
    except UnusableKey as e:
        raise VerificationError(f"certificate key: {e}") from None
    if not verify_signature(key, signature, sig.payload):
        raise VerificationError("signature does not verify over the payload with the certificate's key")
    verify_fulcio_certificate(cert, trust, evidence.integrated_time)
    policy.verify(cert)
    check_simple_signing(sig.payload, digest)
    return f"{ident.describe(cert)}, Rekor log index {evidence.log_index}"
