"""What a signature says it signs: the simple-signing payload and the in-toto statement.

A valid signature over a payload naming another image proves nothing about this one (the
reference's legacy path forgot this check), so every verifier ends here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sigstore.errors import VerificationError

from imaged.errors import InvalidArgument
from imaged.oci import jsondoc
from imaged.registry.reference import canonical_repository, parse

SIMPLE_SIGNING_TYPE = "cosign container image signature"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPES = frozenset({"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"})
# What `cosign sign` (v3) puts in the statement; anything else is an attestation, a claim
# *about* the image (SBOM, provenance...), not the signer's approval of it.
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"


def _get_ci(doc: dict[str, Any], key: str) -> Any:
    """Case-insensitive lookup: old cosign builds wrote `Critical`/`Docker-manifest-digest`."""
    if key in doc:
        return doc[key]
    for k, v in doc.items():
        if isinstance(k, str) and k.lower() == key:
            return v
    return None


def check_simple_signing(payload: bytes, digest: str) -> None:
    """The payload is a cosign simple-signing document naming `digest`."""
    try:
        doc = jsondoc.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("signed payload is not JSON") from None
    critical = _get_ci(doc, "critical") if isinstance(doc, dict) else None
    if not isinstance(critical, dict):
        raise VerificationError("signed payload has no 'critical' section (not a cosign signature payload)")
    kind = _get_ci(critical, "type")
    if not isinstance(kind, str) or kind.lower() != SIMPLE_SIGNING_TYPE:
        raise VerificationError(f"signed payload type is {kind!r}, not {SIMPLE_SIGNING_TYPE!r}")
    image = _get_ci(critical, "image")
    named = _get_ci(image, "docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(named, str):
        raise VerificationError(
            "signed payload names no image digest (critical.image.docker-manifest-digest)"
        )
    if named != digest:
        raise VerificationError(f"signed payload is for image {named}, not {digest}")


def check_docker_reference(
    payload: bytes, repository: str, plain_http: Callable[[str], bool] | None = None
) -> None:
    """The simple-signing payload names `repository` in critical.identity.docker-reference (in
    any spelling of its registry; a tag or digest there is not compared: the digest is)."""
    try:
        doc = jsondoc.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("signed payload is not JSON") from None
    critical = _get_ci(doc, "critical") if isinstance(doc, dict) else None
    identity = _get_ci(critical, "identity") if isinstance(critical, dict) else None
    named = _get_ci(identity, "docker-reference") if isinstance(identity, dict) else None
    if not isinstance(named, str) or not named:
        raise VerificationError("signed payload names no repository (critical.identity.docker-reference)")
    try:
        signed = parse(named, default_tag=False)
    except InvalidArgument:
        raise VerificationError(
            f"signed payload's docker-reference {named[:300]!r} is no image reference"
        ) from None
    if canonical_repository(signed.repository, plain_http) != canonical_repository(repository, plain_http):
        raise VerificationError(f"signed for {signed.repository}, not for {repository}")


def _statement(payload_type: str, payload: bytes) -> dict[str, Any]:
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(f"DSSE payload type is {payload_type!r}, not {IN_TOTO_PAYLOAD_TYPE!r}")
    try:
        doc = jsondoc.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("DSSE payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("_type") not in STATEMENT_TYPES:
        raise VerificationError("DSSE payload is not an in-toto statement")
    return doc


def check_statement(payload_type: str, payload: bytes, digest: str) -> None:
    """The DSSE payload is an in-toto statement with `cosign sign`'s predicate and our digest."""
    doc = _statement(payload_type, payload)
    predicate = doc.get("predicateType")
    if predicate != SIGN_PREDICATE:
        raise VerificationError(
            f"bundle is an attestation (predicateType {predicate!r}), not an image signature "
            f"(predicateType {SIGN_PREDICATE!r})"
        )
    _check_subject(doc, digest)


def check_attestation(payload_type: str, payload: bytes, digest: str, predicate_type: str) -> dict[str, Any]:
    """The DSSE payload is an in-toto statement of `predicate_type` about `digest`; return it."""
    doc = _statement(payload_type, payload)
    found = doc.get("predicateType")
    if found != predicate_type:
        raise VerificationError(f"statement's predicateType is {found!r}, not {predicate_type!r}")
    _check_subject(doc, digest)
    return doc


def _check_subject(doc: dict[str, Any], digest: str) -> None:
    algorithm, _, hex_ = digest.partition(":")
    subjects = doc.get("subject")
    named: list[str] = []
    if isinstance(subjects, list):
        for s in subjects:
            d = s.get("digest") if isinstance(s, dict) else None
            if isinstance(d, dict) and isinstance(d.get(algorithm), str):
                if d[algorithm] == hex_:
                    return
                named.append(f"{algorithm}:{d[algorithm]}")
    raise VerificationError(
        f"statement subjects {named or '(none)'} do not include the image digest {digest}"
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a DSSE signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)
