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


Signature = SimpleSigning | BundleSignature


class SignatureVerifier(Protocol):
    """A rule's verifier: accepts one signature for one digest or says why not."""

    def verify(self, signature: Signature, digest: str) -> str:
        """Return who signed (for the success message); raise sigstore's VerificationError."""
        ...

    def describe(self) -> str:
        """What the rule expects, for failure messages."""
        ...
