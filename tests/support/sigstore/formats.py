"""Signed artifacts in the exact byte formats cosign writes for OCI images."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .rekor import TlogEntry

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

ANN_SIGNATURE = "dev.cosignproject.cosign/signature"
ANN_CERTIFICATE = "dev.sigstore.cosign/certificate"
ANN_CHAIN = "dev.sigstore.cosign/chain"
ANN_BUNDLE = "dev.sigstore.cosign/bundle"


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def digest_hex(image_digest: str) -> str:
    algo, _, hexpart = image_digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ValueError(f"expected sha256:<64 hex>, got {image_digest!r}")
    return hexpart


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def simple_signing_payload(
    image_digest: str, reference: str, optional: dict[str, Any] | None = None
) -> bytes:
    """cosign's simple-signing payload, byte for byte (key order and compact separators)."""
    return _compact(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": image_digest},
                "type": "cosign container image signature",
            },
            "optional": optional,
        }
    )


def intoto_statement(image_digest: str, predicate: dict[str, Any] | None = None) -> bytes:
    """cosign 3 `sign` statement: subject digest only, no `predicate` field (cosign 3.0.x)."""
    statement: dict[str, Any] = {
        "_type": STATEMENT_V1,
        "subject": [{"digest": {"sha256": digest_hex(image_digest)}}],
        "predicateType": COSIGN_SIGN_PREDICATE,
    }
    if predicate is not None:
        statement["predicate"] = predicate
    return _compact(statement)


SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"


def attestation_statement(image_digest: str, predicate_type: str, predicate: dict[str, Any]) -> bytes:
    """What `cosign attest --type <predicate_type>` signs: an in-toto Statement v1 about the image."""
    return _compact(
        {
            "_type": STATEMENT_V1,
            "subject": [{"name": "image", "digest": {"sha256": digest_hex(image_digest)}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    )


def slsa_provenance(builder_id: str, repository: str = "https://github.com/org/app") -> dict[str, Any]:
    """A SLSA v1 provenance predicate, the shape GitHub's attest-build-provenance writes."""
    return {
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"ref": "refs/heads/main", "repository": repository}},
        },
        "runDetails": {"builder": {"id": builder_id}, "metadata": {"invocationId": "1"}},
    }


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the envelope signature covers."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


@dataclass(frozen=True)
class LegacySignature:
    """One layer of a `sha256-<hex>.sig` manifest: payload blob + annotations."""

    payload: bytes
    signature: bytes
    annotations: dict[str, str]
    tlog_entry: TlogEntry | None
    media_type: str = SIMPLESIGNING_MEDIA_TYPE

    @property
    def payload_digest(self) -> str:
        return sha256_digest(self.payload)


@dataclass(frozen=True)
class BundleSignature:
    """A Sigstore bundle v0.3 with a DSSE envelope, as cosign 3 stores it in a referrer."""

    bundle: dict[str, Any]
    statement: bytes
    signature: bytes
    tlog_entry: TlogEntry | None

    @property
    def json_bytes(self) -> bytes:
        """The referrer layer blob (compact JSON)."""
        return _compact(self.bundle)

    @property
    def media_type(self) -> str:
        return BUNDLE_MEDIA_TYPE
