"""Key-signed images (cosign `--key`): legacy simple-signing layers and bundles.

As in the reference, a key rule needs no transparency log: the key is the trust anchor, and
any Rekor evidence the signature carries is ignored. The signed content is still bound to the
image: the simple-signing payload or in-toto statement must name the digest, or the message
signature must be over the manifest digest itself.
"""

from __future__ import annotations

from typing import Any

from sigstore.errors import VerificationError

from imaged.oci import jsondoc
from imaged.verify.keys import (
    PublicKey,
    decode_b64,
    describe,
    key_hint,
    verify_prehashed_sha256,
    verify_signature,
)
from imaged.verify.legacy import signature_bytes
from imaged.verify.material import BundleSignature, Opened, Signed, SimpleSigning
from imaged.verify.payload import check_simple_signing, check_statement, pae
from imaged.verify.signers import key_signer

MAX_DSSE_SIGNATURES = 8


def verify_static_simple_signing(sig: SimpleSigning, digest: str, key: PublicKey) -> Signed:
    signature = signature_bytes(sig)
    if not verify_signature(key, signature, sig.payload):
        raise VerificationError(f"signature does not verify with the rule's {describe(key)}")
    check_simple_signing(sig.payload, digest)
    return Signed(describe(key), key_signer(key), signature)


def _hint_note(doc: dict[str, Any], key: PublicKey) -> str:
    vm = doc.get("verificationMaterial")
    pk = vm.get("publicKey") if isinstance(vm, dict) else None
    hint = pk.get("hint") if isinstance(pk, dict) else None
    if isinstance(hint, str) and hint and hint != key_hint(key):
        return f" (the bundle names key hint {hint}, the rule's key is {key_hint(key)})"
    return ""


def _open_dsse(env: dict[str, Any], key: PublicKey, note: str = "") -> tuple[str, bytes, bytes]:
    """(payloadType, payload, the signature that verified) of a DSSE envelope one of whose
    signatures verifies with `key`."""
    payload_type = env.get("payloadType")
    payload = decode_b64(str(env.get("payload", "")), "DSSE payload")
    sigs = env.get("signatures")
    if not isinstance(payload_type, str) or not isinstance(sigs, list) or not sigs:
        raise VerificationError("DSSE envelope lacks payloadType or signatures")
    message = pae(payload_type, payload)
    for s in sigs[:MAX_DSSE_SIGNATURES]:
        if not isinstance(s, dict):
            continue
        signature = decode_b64(str(s.get("sig", "")), "DSSE signature")
        if verify_signature(key, signature, message):
            return payload_type, payload, signature
    raise VerificationError(f"DSSE signature does not verify with the rule's {describe(key)}{note}")


def open_static_envelope(raw: bytes, key: PublicKey, *, bundle: bool) -> Opened:
    """An attestation signed with `key`: a bundle's DSSE envelope, or a legacy `.att` envelope
    layer. The statement is the caller's to check."""
    try:
        doc = jsondoc.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("attestation is not JSON") from None
    if not isinstance(doc, dict):
        raise VerificationError("attestation is not a JSON object")
    env = doc.get("dsseEnvelope") if bundle else doc
    if not isinstance(env, dict):
        raise VerificationError("bundle has no dsseEnvelope" if bundle else "not a DSSE envelope")
    try:
        payload_type, payload, signature = _open_dsse(env, key, _hint_note(doc, key) if bundle else "")
    except ValueError as e:
        raise VerificationError(str(e)) from None
    return Opened(Signed(describe(key), key_signer(key), signature), payload_type, payload)


def verify_static_bundle(sig: BundleSignature, digest: str, key: PublicKey) -> Signed:
    try:
        doc = jsondoc.loads(sig.bundle)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("bundle is not JSON") from None
    if not isinstance(doc, dict) or not str(doc.get("mediaType", "")).startswith(
        "application/vnd.dev.sigstore.bundle"
    ):
        raise VerificationError("not a Sigstore bundle (mediaType)")
    try:
        if isinstance(env := doc.get("dsseEnvelope"), dict):
            payload_type, payload, signature = _open_dsse(env, key, _hint_note(doc, key))
            check_statement(payload_type, payload, digest)
        elif isinstance(ms := doc.get("messageSignature"), dict):
            md = ms.get("messageDigest")
            algorithm, _, hex_ = digest.partition(":")
            if not isinstance(md, dict) or md.get("algorithm") != "SHA2_256" or algorithm != "sha256":
                raise VerificationError("message signature is not over a SHA2_256 digest")
            signed = decode_b64(str(md.get("digest", "")), "message digest")
            if signed != bytes.fromhex(hex_):
                raise VerificationError(
                    f"message signature is over sha256:{signed.hex()}, not the image digest {digest}"
                )
            signature = decode_b64(str(ms.get("signature", "")), "message signature")
            if not verify_prehashed_sha256(key, signature, signed):
                raise VerificationError(
                    f"message signature does not verify with the rule's {describe(key)}{_hint_note(doc, key)}"
                )
        else:
            raise VerificationError("bundle has neither dsseEnvelope nor messageSignature")
    except ValueError as e:
        raise VerificationError(str(e)) from None
    return Signed(describe(key), key_signer(key), signature)
