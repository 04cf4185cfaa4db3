"""Who signed, and which signature: what a threshold counts.

A threshold of k means k distinct parties, so the count must not grow when discovery finds one
signature twice (two identical `.sig` layers, one bundle in two referrers or serialized twice,
one signature as a referrer and in the `.sig` tag), nor when one party signs twice. Each verified
signature is therefore described by its signer (a keyless certificate's identity, SAN and issuer;
a key's SPKI) and by the signature bytes that verified; `threshold.Tally` counts distinct ones.
"""

from __future__ import annotations

import hashlib
import json

from cryptography import x509

from imaged.oci import jsondoc
from imaged.verify import identity as ident
from imaged.verify.keys import PublicKey, decode_b64, spki_der
from imaged.verify.material import BundleSignature, Signature, SimpleSigning


def keyless_signer(cert: x509.Certificate) -> str:
    """A Fulcio certificate's identity: its issuer and SAN values (not the ephemeral key, which
    changes at every signing by the same identity)."""
    try:
        issuer = ident.issuer(cert) or ""
    except Exception:  # verified already; a broken issuer extension is refused before this
        issuer = ""
    return "keyless " + json.dumps([issuer, sorted(ident.subjects(cert))], separators=(",", ":"))


def key_signer(key: PublicKey) -> str:
    """A static key's identity: the hash of its SPKI, whatever PEM form configured it."""
    return "key sha256:" + hashlib.sha256(spki_der(key)).hexdigest()


def bundle_signature(raw: bytes) -> bytes:
    """The signature bytes of a bundle (its message signature, or its DSSE envelope's first
    signature, the only one a keyless bundle may have); the raw bytes when there are none."""
    try:
        doc = jsondoc.loads(raw)
        if isinstance(ms := doc.get("messageSignature"), dict):
            return decode_b64(str(ms.get("signature", "")), "message signature")
        sigs = doc["dsseEnvelope"]["signatures"]
        return decode_b64(str(sigs[0]["sig"]), "DSSE signature")
    except (ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return raw


def material_key(sig: Signature) -> bytes:
    """What makes two discovered signatures copies of one (checked once): a legacy layer's payload
    and annotations, a bundle's bytes. Everything that decides the outcome is in the key, so a
    broken copy cannot hide a good one; copies that differ elsewhere (a bundle serialized
    otherwise) are still counted once, by the signature bytes that verified (threshold.py)."""
    h = hashlib.sha256()
    if isinstance(sig, SimpleSigning):
        h.update(b"legacy\0" + hashlib.sha256(sig.payload).digest())
        h.update(json.dumps(sorted(sig.annotations.items())).encode())
    else:
        assert isinstance(sig, BundleSignature)
        h.update(b"bundle\0" + sig.bundle)
    return h.digest()
