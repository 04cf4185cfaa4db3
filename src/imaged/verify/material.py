"""Signature material found for an image, in the two on-registry shapes, ready to verify."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# cosign 2's OCI 1.1 referrer form of legacy signatures (simple-signing layers, `subject` set).
COSIGN_SIG_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"

ANN_SIGNATURE = "dev.cosignproject.cosign/signature"
ANN_CERTIFICATE = "dev.sigstore.cosign/certificate"
ANN_CHAIN = "dev.sigstore.cosign/chain"
ANN_BUNDLE = "dev.sigstore.cosign/bundle"
# cosign's referrer manifest annotation naming a bundle's in-toto predicate type.
ANN_PREDICATE_TYPE = "dev.sigstore.bundle.predicateType"
# The legacy `sha256-<hex>.att` tag: one DSSE envelope per layer, its type in this annotation.
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
ANN_ATT_PREDICATE_TYPE = "predicateType"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


@dataclass(frozen=True, slots=True)
class SimpleSigning:
    """A legacy cosign signature: the exact payload bytes plus the layer's annotations."""

    payload: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)
    where: str = "legacy signature"  # names the signature in failure messages
    how: str = "verified via legacy signature"  # the success message's start


@dataclass(frozen=True, slots=True)
class BundleSignature:
    """A Sigstore bundle (v0.3 JSON), from an OCI referrer."""

    bundle: bytes
    where: str = "bundle"
    how: str = "verified via bundle"
    # The referrer manifest's `dev.sigstore.bundle.predicateType`, when it has one: a hint only
    # (the verified statement says what it is), used to send attestations and signatures apart.
    predicate_type: str | None = None

    @property
    def is_attestation(self) -> bool:
        return self.predicate_type is not None and self.predicate_type != SIGN_PREDICATE


@dataclass(frozen=True, slots=True)
class Envelope:
    """A legacy cosign attestation: a DSSE envelope layer of the `.att` tag, with its annotations."""

    envelope: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)
    where: str = "legacy attestation"

    @property
    def predicate_type(self) -> str | None:
        return self.annotations.get(ANN_ATT_PREDICATE_TYPE)


Signature = SimpleSigning | BundleSignature


@dataclass(frozen=True, slots=True)
class Signed:
    """A signature that verified: `who` for messages, and what a threshold counts distinct
    (signers.py): the `signer` (certificate identity or key) and the `signature` bytes."""

    who: str
    signer: str
    signature: bytes


# What can carry an attestation: a bundle (referrer) or a legacy envelope.
AttestationMaterial = BundleSignature | Envelope


@dataclass(frozen=True, slots=True)
class Opened:
    """An attestation envelope whose signature verified: who signed it (`signed`, what a threshold
    counts when the attestation stands for its signer's signature) and its statement, unchecked."""

    signed: Signed
    payload_type: str
    payload: bytes


class SignatureVerifier(Protocol):
    """A rule's verifier: accepts one signature for one digest or says why not."""

    def verify(self, signature: Signature, digest: str) -> str:
        """Return who signed (for the success message); raise sigstore's VerificationError."""
        ...

    def describe(self) -> str:
        """What the rule expects, for failure messages."""
        ...


class Authority(SignatureVerifier, Protocol):
    """One of a rule's authorities: verifies image signatures and opens attestation envelopes."""

    name: str

    def check(self, signature: Signature, digest: str) -> Signed:
        """`verify`, saying who signed and with which signature bytes (for thresholds)."""
        ...

    def open_envelope(self, material: AttestationMaterial) -> Opened:
        """Verify the envelope's signature; return who signed and the statement, unchecked
        otherwise (the statement's subject and predicate are the caller's). Raises
        sigstore's VerificationError."""
        ...
