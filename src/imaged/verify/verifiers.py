"""A rule's authorities as policy objects: keyless identities and static keys, over both formats.

Each authority verifies image signatures (`verify`) and opens attestation envelopes
(`open_envelope`); a rule holds one or several (`build_authorities`), and the engine counts how
many distinct ones verified against the rule's threshold.
"""

from __future__ import annotations

from sigstore.errors import VerificationError

from imaged.verify.bundle import open_keyless_dsse, verify_keyless_bundle
from imaged.verify.config import KeylessRule, Rule
from imaged.verify.identity import identity_policy
from imaged.verify.keys import PublicKey, describe, load_public_key
from imaged.verify.legacy import open_legacy_keyless_envelope, verify_legacy_keyless
from imaged.verify.material import (
    AttestationMaterial,
    Authority,
    BundleSignature,
    Opened,
    Signature,
    Signed,
)
from imaged.verify.static import open_static_envelope, verify_static_bundle, verify_static_simple_signing
from imaged.verify.trust import TrustRoot


def _either(exact: str | None, regex: str | None) -> str:
    return " and ".join(x for x in (repr(exact) if exact else "", f"/{regex}/" if regex else "") if x)


NO_ROOT_YET = "no Sigstore trust root for keyless verification yet"


class KeylessVerifier:
    """Fulcio certificate with the rule's issuer, subject and claims, anchored in `trust`.

    Without a root (none loaded yet), it verifies nothing: the rule's other authorities may still
    be enough (a key under threshold 1); the engine says when this one was needed."""

    def __init__(self, rule: KeylessRule, trust: TrustRoot | None, name: str | None = None) -> None:
        self.rule = rule
        self.trust = trust
        self.policy = identity_policy(rule)
        subject = f"subject {_either(rule.subject, rule.subject_regex)}"
        self.name = rule.name or (f"{name} ({subject})" if name else subject)

    def check(self, signature: Signature, digest: str) -> Signed:
        if self.trust is None:
            raise VerificationError(NO_ROOT_YET)
        if isinstance(signature, BundleSignature):
            return verify_keyless_bundle(signature, digest, self.trust, self.policy)
        return verify_legacy_keyless(signature, digest, self.trust, self.policy)

    def verify(self, signature: Signature, digest: str) -> str:
        return self.check(signature, digest).who

    def open_envelope(self, material: AttestationMaterial) -> Opened:
        if self.trust is None:
            raise VerificationError(NO_ROOT_YET)
        if isinstance(material, BundleSignature):
            return open_keyless_dsse(material, self.trust, self.policy)
        return open_legacy_keyless_envelope(material, self.trust, self.policy)

    def describe(self) -> str:
        r = self.rule
        issuer = _either(r.issuer, r.issuer_regex)
        subject = _either(r.subject, r.subject_regex)
        claims = ", ".join(f"{k} {v!r}" for k, v in r.claims.items())
        return f"keyless signature by subject {subject} from issuer {issuer}" + (
            f" with claims {claims}" if claims else ""
        )


class StaticKeyVerifier:
    """A signature by one configured public key; no transparency log needed."""

    def __init__(self, key: PublicKey, name: str | None = None) -> None:
        self.key = key
        self.name = name or describe(key)

    def check(self, signature: Signature, digest: str) -> Signed:
        if isinstance(signature, BundleSignature):
            return verify_static_bundle(signature, digest, self.key)
        return verify_static_simple_signing(signature, digest, self.key)

    def verify(self, signature: Signature, digest: str) -> str:
        return self.check(signature, digest).who

    def open_envelope(self, material: AttestationMaterial) -> Opened:
        if isinstance(material, BundleSignature):
            return open_static_envelope(material.bundle, self.key, bundle=True)
        return open_static_envelope(material.envelope, self.key, bundle=False)

    def describe(self) -> str:
        return f"signature by {describe(self.key)}"


def build_authorities(rule: Rule, trust: TrustRoot | None) -> tuple[Authority, ...]:
    """The authorities of a validated rule, keyless first, in configuration order; () for skip/deny.
    Without `trust`, keyless ones verify nothing (see KeylessVerifier)."""
    out: list[Authority] = []
    keyless = rule.keyless_authorities()
    for field, k in keyless:
        out.append(KeylessVerifier(k, trust, name=field if len(keyless) > 1 else None))
    for _field, p in rule.key_authorities():
        if p.certificate:
            out.append(StaticKeyVerifier(load_public_key(p.certificate), name=p.name))
    return tuple(out)
