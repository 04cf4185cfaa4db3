"""A rule's attestation requirements: an in-toto statement of a predicate type, signed by one of the
rule's authorities, about this image, whose predicate satisfies the rule's CEL expression.

Candidates are the bundle referrers (their manifest's `dev.sigstore.bundle.predicateType` says
which to try first; the verified statement decides) and the legacy `.att` tag's envelopes. A
requirement holds when one candidate passes every check; otherwise every candidate's reason is
reported: the signature (with each authority), the statement (type, subject digest), the policy.
A satisfied requirement says which authority signed it and with what (`signer`, `signed`): in a
rule with attestations, that stands for the authority's signature (see service.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sigstore.errors import VerificationError

from imaged.verify.cel import CelError, CelEvaluator
from imaged.verify.config import AttestationRule
from imaged.verify.material import AttestationMaterial, Authority, Opened, Signed
from imaged.verify.payload import check_attestation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AttestationResult:
    requirement: AttestationRule
    message: str | None  # how it was satisfied, None when it was not
    reasons: tuple[str, ...] = ()
    # When satisfied: the rule's index of the authority that signed it, what it signed, and where.
    signer: int | None = None
    signed: Signed | None = None
    where: str = ""

    @property
    def satisfied(self) -> bool:
        return self.message is not None

    def describe(self) -> str:
        r = self.requirement
        return f"attestation {r.predicate_type} with policy {r.policy!r}"


def _candidates(
    requirement: AttestationRule, materials: list[AttestationMaterial]
) -> list[AttestationMaterial]:
    """Materials that may be of the wanted type: those saying so first, then those saying nothing."""
    wanted = requirement.predicate_type
    named = [m for m in materials if m.predicate_type == wanted]
    unnamed = [m for m in materials if m.predicate_type is None]
    return named + unnamed


def check_requirement(
    requirement: AttestationRule,
    authorities: tuple[Authority, ...],
    materials: list[AttestationMaterial],
    digest: str,
    repository: str,
    cel: CelEvaluator,
    indices: tuple[int, ...] | None = None,
) -> AttestationResult:
    """`indices`: each authority's index in the rule (default: their positions here)."""
    reasons: list[str] = []
    positions = indices if indices is not None else tuple(range(len(authorities)))
    for material in _candidates(requirement, materials):
        opened: Opened | None = None
        signer = 0
        tried: list[str] = []
        for authority, position in zip(authorities, positions, strict=True):
            try:
                opened = authority.open_envelope(material)
                signer = position
                break
            except VerificationError as e:
                tried.append(f"{authority.name}: {e}" if len(authorities) > 1 else str(e))
            except Exception as e:  # hostile input is a refusal, never a crash or a pass
                log.warning("unexpected error opening %s: %s", material.where, e, exc_info=True)
                tried.append(f"unusable ({type(e).__name__}: {e})")
        if opened is None:
            reasons.append(f"{material.where}: {'; '.join(tried)}")
            continue
        try:
            statement = check_attestation(
                opened.payload_type, opened.payload, digest, requirement.predicate_type
            )
        except VerificationError as e:
            reasons.append(f"{material.where}: {e}")
            continue
        variables = {
            "predicate": statement.get("predicate"),
            "predicateType": requirement.predicate_type,
            "statement": statement,
            "image": {"digest": digest, "repository": repository},
        }
        try:
            ok = cel.evaluate(requirement.policy, variables)
        except CelError as e:
            reasons.append(f"{material.where}: policy {requirement.policy!r}: {e}")
            continue
        if not ok:
            reasons.append(f"{material.where}: predicate does not satisfy the policy {requirement.policy!r}")
            continue
        return AttestationResult(
            requirement,
            f"attestation {requirement.predicate_type} by {opened.signed.who} ({material.where})",
            signer=signer,
            signed=opened.signed,
            where=material.where,
        )
    if not materials or not _candidates(requirement, materials):
        reasons.append(f"no attestation of type {requirement.predicate_type} found")
    return AttestationResult(requirement, None, tuple(reasons))
