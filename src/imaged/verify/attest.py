"""A rule's attestation requirements: an in-toto statement of a predicate type, signed by one of the
rule's authorities, about this image, whose predicate satisfies the rule's CEL expression.

Candidates are the bundle referrers (their manifest's `dev.sigstore.bundle.predicateType` says
which to try first; the verified statement decides) and the legacy `.att` tag's envelopes. A
requirement holds when one candidate passes every check; otherwise every candidate's reason is
reported: the signature (with each authority), the statement (type, subject digest), the policy.
A satisfied requirement says which authorities signed a passing candidate and with what
(`credits`; the first one in `signer`, `signed`): in a rule with attestations, each stands for
that authority's signature (see service.py), so two parties' attestations meet a threshold of 2.
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
    # Every (authority index, where, what) that satisfied it: under a threshold, two parties'
    # attestations of one requirement are two signers.
    credits: tuple[tuple[int, str, Signed], ...] = ()

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
    first: tuple[Opened, int, AttestationMaterial] | None = None
    credits: list[tuple[int, str, Signed]] = []
    for material in _candidates(requirement, materials):
        # Every authority that opens it is credited (the tally counts one signer once).
        opened_by: list[tuple[int, Opened]] = []
        tried: list[str] = []
        for authority, position in zip(authorities, positions, strict=True):
            try:
                opened_by.append((position, authority.open_envelope(material)))
            except VerificationError as e:
                tried.append(f"{authority.name}: {e}" if len(authorities) > 1 else str(e))
            except Exception as e:  # hostile input is a refusal, never a crash or a pass
                log.warning("unexpected error opening %s: %s", material.where, e, exc_info=True)
                tried.append(f"unusable ({type(e).__name__}: {e})")
        if not opened_by:
            reasons.append(f"{material.where}: {'; '.join(tried)}")
            continue
        signer, opened = opened_by[0]
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
        credits.extend((position, material.where, o.signed) for position, o in opened_by)
        if first is None:
            first = (opened, signer, material)
    if first is not None:
        opened, signer, material = first
        return AttestationResult(
            requirement,
            f"attestation {requirement.predicate_type} by {opened.signed.who} ({material.where})",
            signer=signer,
            signed=opened.signed,
            where=material.where,
            credits=tuple(credits),
        )
    if not materials or not _candidates(requirement, materials):
        reasons.append(f"no attestation of type {requirement.predicate_type} found")
    return AttestationResult(requirement, None, tuple(reasons))
