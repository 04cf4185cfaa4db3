"""Rekor evidence of legacy cosign signatures: the SET in `dev.sigstore.cosign/bundle`.

A legacy keyless signature carries no inclusion proof, only Rekor's Signed Entry Timestamp:
an ECDSA signature by the log over the RFC 8785 canonical JSON of
`{body, integratedTime, logID, logIndex}`. Once it verifies with a Rekor key of the trusted
root, `integratedTime` is a trusted signing time, and the entry body must then be shown to be
*this* signature: its hash of the payload, its signature bytes and its certificate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography import x509
from sigstore.errors import VerificationError

from imaged.oci import jsondoc
from imaged.verify.keys import decode_b64, verify_signature
from imaged.verify.trust import TrustRoot


@dataclass(frozen=True, slots=True)
class LogEvidence:
    integrated_time: datetime
    log_index: int
    log_url: str
    body: dict[str, Any]


def verify_set(annotation: str, trust: TrustRoot) -> LogEvidence:
    """Check the SET with the trusted root's Rekor key; return the vouched-for entry."""
    try:
        doc = jsondoc.loads(annotation)
    except ValueError:
        raise VerificationError("Rekor bundle annotation is not JSON") from None
    payload = doc.get("Payload") if isinstance(doc, dict) else None
    set_b64 = doc.get("SignedEntryTimestamp") if isinstance(doc, dict) else None
    if not isinstance(payload, dict) or not isinstance(set_b64, str):
        raise VerificationError("Rekor bundle annotation lacks SignedEntryTimestamp or Payload")
    body, itime, index, log_id = (payload.get(k) for k in ("body", "integratedTime", "logIndex", "logID"))
    if (
        not isinstance(body, str)
        or not isinstance(log_id, str)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in (itime, index))
    ):
        raise VerificationError(
            "Rekor bundle Payload needs string body and logID, integer integratedTime and logIndex"
        )
    assert isinstance(itime, int) and isinstance(index, int)
    try:
        key = trust.rekor_keys.get(bytes.fromhex(log_id))
    except ValueError:
        raise VerificationError(f"Rekor bundle logID {log_id!r} is not hex") from None
    if key is None:
        raise VerificationError(
            f"Rekor entry is from log {log_id[:16]}…, which the trusted root ({trust.source}) does not list"
        )
    try:
        set_sig = decode_b64(set_b64, "SignedEntryTimestamp")
        canonical = rfc8785.dumps({"body": body, "integratedTime": itime, "logID": log_id, "logIndex": index})
    except (ValueError, rfc8785.CanonicalizationError) as e:
        raise VerificationError(f"Rekor bundle: {e}") from None
    if not verify_signature(key.key, set_sig, canonical):
        raise VerificationError(
            f"Rekor SignedEntryTimestamp does not verify with the key of {key.url or 'the log'}"
        )
    when = datetime.fromtimestamp(itime, UTC)
    if not key.validity.contains(when):
        raise VerificationError(
            f"Rekor key of {key.url} was not valid at {when.isoformat()} (valid {key.validity})"
        )
    try:
        entry = jsondoc.loads(decode_b64(body, "Rekor entry body"))
    except ValueError as e:
        raise VerificationError(f"Rekor entry body is not base64 JSON: {e}") from None
    if not isinstance(entry, dict):
        raise VerificationError("Rekor entry body is not a JSON object")
    return LogEvidence(when, index, key.url, entry)


def check_entry_binds(
    entry: dict[str, Any], payload: bytes, signature: bytes, cert: x509.Certificate
) -> None:
    """The log entry (hashedrekord or rekord 0.0.1) records this payload, signature and certificate."""
    kind, version = entry.get("kind"), entry.get("apiVersion")
    if kind not in ("hashedrekord", "rekord") or version != "0.0.1":
        raise VerificationError(f"Rekor entry kind {kind}/{version} is not hashedrekord or rekord 0.0.1")
    spec = entry.get("spec")
    data = spec.get("data") if isinstance(spec, dict) else None
    sig = spec.get("signature") if isinstance(spec, dict) else None
    hashed = data.get("hash") if isinstance(data, dict) else None
    if not isinstance(hashed, dict) or not isinstance(sig, dict):
        raise VerificationError("Rekor entry has no data hash or signature")
    if hashed.get("algorithm") != "sha256" or hashed.get("value") != hashlib.sha256(payload).hexdigest():
        raise VerificationError("Rekor entry records a different payload hash than the signed payload")
    try:
        logged_sig = decode_b64(str(sig.get("content", "")), "Rekor entry signature")
        pk = sig.get("publicKey")
        logged_pem = decode_b64(str(pk.get("content", "") if isinstance(pk, dict) else ""), "Rekor entry key")
    except ValueError as e:
        raise VerificationError(str(e)) from None
    if logged_sig != signature:
        raise VerificationError("Rekor entry records a different signature")
    try:
        logged_cert = x509.load_pem_x509_certificate(logged_pem)
    except ValueError:
        raise VerificationError("Rekor entry records a key, not the signing certificate") from None
    if logged_cert != cert:
        raise VerificationError("Rekor entry records a different signing certificate")


def _maybe_double_b64(value: str) -> bytes:
    """intoto 0.0.2 entries base64 the base64 the envelope held; accept either."""
    raw = decode_b64(value, "Rekor entry value")
    try:
        return decode_b64(raw.decode("ascii"), "Rekor entry value")
    except (ValueError, UnicodeDecodeError):
        return raw


def check_envelope_entry_binds(entry: dict[str, Any], payload: bytes, cert: x509.Certificate) -> None:
    """The log entry (intoto 0.0.2 or dsse 0.0.1, what cosign attest writes) records this payload's
    hash and this certificate as the verifier."""
    kind, version = entry.get("kind"), entry.get("apiVersion")
    spec = entry.get("spec")
    if not isinstance(spec, dict):
        raise VerificationError("Rekor entry has no spec")
    if kind == "intoto" and version == "0.0.2":
        content = spec.get("content")
        hashed = content.get("payloadHash") if isinstance(content, dict) else None
        envelope = content.get("envelope") if isinstance(content, dict) else None
        sigs = envelope.get("signatures") if isinstance(envelope, dict) else None
        keys = [s.get("publicKey") for s in sigs if isinstance(s, dict)] if isinstance(sigs, list) else []
    elif kind == "dsse" and version == "0.0.1":
        hashed = spec.get("payloadHash")
        sigs = spec.get("signatures")
        keys = [s.get("verifier") for s in sigs if isinstance(s, dict)] if isinstance(sigs, list) else []
    else:
        raise VerificationError(f"Rekor entry kind {kind}/{version} is not intoto 0.0.2 or dsse 0.0.1")
    if (
        not isinstance(hashed, dict)
        or hashed.get("algorithm") != "sha256"
        or hashed.get("value") != hashlib.sha256(payload).hexdigest()
    ):
        raise VerificationError("Rekor entry records a different payload hash than the attestation's")
    for value in keys:
        if not isinstance(value, str):
            continue
        try:
            if x509.load_pem_x509_certificate(_maybe_double_b64(value)) == cert:
                return
        except ValueError:
            continue
    raise VerificationError("Rekor entry does not record the attestation's signing certificate")
