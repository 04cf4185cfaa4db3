"""A rule's verifier as one policy object: keyless identity or static key, over both formats."""

from __future__ import annotations

from imaged.verify.bundle import verify_keyless_bundle
from imaged.verify.config import KeylessRule, Rule
from imaged.verify.identity import identity_policy
from imaged.verify.keys import PublicKey, describe, load_public_key
from imaged.verify.legacy import verify_legacy_keyless
from imaged.verify.material import BundleSignature, Signature, SignatureVerifier
from imaged.verify.static import verify_static_bundle, verify_static_simple_signing
from imaged.verify.trust import TrustRoot


class KeylessVerifier:
    """Fulcio certificate with the rule's issuer and subject, anchored in `trust`."""

    def __init__(self, rule: KeylessRule, trust: TrustRoot) -> None:
        self.rule = rule
        self.trust = trust
        self.policy = identity_policy(rule)

    def verify(self, signature: Signature, digest: str) -> str:
        if isinstance(signature, BundleSignature):
            return verify_keyless_bundle(signature, digest, self.trust, self.policy)
        return verify_legacy_keyless(signature, digest, self.trust, self.policy)

    def describe(self) -> str:
        r = self.rule
        issuer = " and ".join(
            x
            for x in (repr(r.issuer) if r.issuer else "", f"/{r.issuer_regex}/" if r.issuer_regex else "")
            if x
        )
        subject = " and ".join(
            x
            for x in (repr(r.subject) if r.subject else "", f"/{r.subject_regex}/" if r.subject_regex else "")
            if x
        )
        return f"keyless signature by subject {subject} from issuer {issuer}"


class StaticKeyVerifier:
    """A signature by one configured public key; no transparency log needed."""

    def __init__(self, key: PublicKey) -> None:
        self.key = key

    def verify(self, signature: Signature, digest: str) -> str:
        if isinstance(signature, BundleSignature):
            return verify_static_bundle(signature, digest, self.key)
        return verify_static_simple_signing(signature, digest, self.key)

    def describe(self) -> str:
        return f"signature by {describe(self.key)}"


def build_verifier(rule: Rule, trust: TrustRoot | None) -> SignatureVerifier | None:
    """The verifier for a validated rule; None for skip and deny rules."""
    if rule.keyless is not None:
        if trust is None:
            raise ValueError("a keyless rule needs a trust root")
        return KeylessVerifier(rule.keyless, trust)
    if rule.public_key is not None and rule.public_key.certificate:
        return StaticKeyVerifier(load_public_key(rule.public_key.certificate))
    return None
