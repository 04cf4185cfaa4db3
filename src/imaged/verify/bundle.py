"""Keyless Sigstore bundles (cosign 3), verified by sigstore-python.

sigstore-python does the cryptography: certificate chain at the signed time (TSA or Rekor),
SCT, transparency log inclusion proof and checkpoint, the signature, and the consistency of
the log entry with the bundle. Ours is the part about images: the rule's identity policy,
and what was signed. A DSSE bundle must hold an in-toto statement with `cosign sign`'s
predicate naming the image digest; a message-signature bundle must sign the image manifest's
digest itself (its `messageDigest` is the manifest's sha256).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle
from sigstore.verify.policy import VerificationPolicy
from sigstore_models.common.v1 import HashAlgorithm

from imaged.oci import jsondoc
from imaged.verify import identity as ident
from imaged.verify.material import BundleSignature, Opened, Signed
from imaged.verify.payload import check_statement
from imaged.verify.signers import bundle_signature, keyless_signer
from imaged.verify.trust import TrustRoot


def bundle_kind(raw: bytes) -> str:
    """`dsse` or `message`, from the JSON (sigstore-python exposes it only privately)."""
    try:
        doc = jsondoc.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("bundle is not JSON") from None
    if not isinstance(doc, dict):
        raise VerificationError("bundle is not a JSON object")
    if isinstance(doc.get("dsseEnvelope"), dict):
        return "dsse"
    if isinstance(doc.get("messageSignature"), dict):
        return "message"
    raise VerificationError("bundle has neither dsseEnvelope nor messageSignature")


def _load(raw: bytes) -> Bundle:
    try:
        return Bundle.from_json(raw)
    except SigstoreError as e:
        raise VerificationError(f"bundle is not usable: {e}") from None
    except Exception as e:  # pydantic and friends, on malformed input
        raise VerificationError(f"bundle is malformed: {e}") from None


@contextlib.contextmanager
def _refusing() -> Iterator[None]:
    """Anything unexpected on hostile input is a refusal, never a pass."""
    try:
        yield
    except VerificationError:
        raise
    except Exception as e:
        raise VerificationError(f"bundle verification failed: {type(e).__name__}: {e}") from None


def _signed(bundle: Bundle, raw: bytes) -> Signed:
    entry = bundle.log_entry._inner  # log index for the message only
    cert = bundle.signing_certificate
    who = f"{ident.describe(cert)}, Rekor log index {entry.log_index}"
    return Signed(who, keyless_signer(cert), bundle_signature(raw))


def _open_dsse(sig: BundleSignature, trust: TrustRoot, policy: VerificationPolicy) -> Opened:
    bundle = _load(sig.bundle)
    with _refusing():
        payload_type, payload = trust.verifier.verify_dsse(bundle, policy)
    return Opened(_signed(bundle, sig.bundle), payload_type, payload)


def open_keyless_dsse(sig: BundleSignature, trust: TrustRoot, policy: VerificationPolicy) -> Opened:
    """An attestation bundle, once sigstore-python has checked the envelope, certificate, log
    entry and `policy`. The statement itself is the caller's."""
    if bundle_kind(sig.bundle) != "dsse":
        raise VerificationError("bundle signs a message, not an in-toto statement")
    return _open_dsse(sig, trust, policy)


def verify_keyless_bundle(
    sig: BundleSignature, digest: str, trust: TrustRoot, policy: VerificationPolicy
) -> Signed:
    """Verify one bundle for `digest` under `policy`; return who signed. Raises VerificationError."""
    if bundle_kind(sig.bundle) == "dsse":
        opened = _open_dsse(sig, trust, policy)
        with _refusing():
            check_statement(opened.payload_type, opened.payload, digest)
        return opened.signed
    bundle = _load(sig.bundle)
    with _refusing():
        algorithm, _, hex_ = digest.partition(":")
        if algorithm != "sha256":
            raise VerificationError(
                f"message-signature bundles sign sha256 digests; the image is {algorithm}"
            )
        trust.verifier.verify_artifact(
            Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_)), bundle, policy
        )
    return _signed(bundle, sig.bundle)
