"""Counting a rule's authorities over an image's signatures: any one, or k distinct ones.

With `threshold: k`, k distinct authorities must each verify a distinct signature: two keyless
identities whose regexes overlap cannot both count one signature, so two-party signing means two
signatures. The count is a maximum bipartite matching (authorities to signatures they verify),
found by augmenting paths; a rule has at most 16 authorities and a stage 32 signatures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sigstore.errors import VerificationError

from imaged.verify.material import Authority, Signature

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What each authority verified (signature index -> success message) and why not."""

    authorities: tuple[Authority, ...]
    threshold: int
    # A further requirement on a verified signature (checkDockerReference); raises VerificationError.
    check: Callable[[Signature], None] | None = None
    signatures: list[Signature] = field(default_factory=list)
    verified: dict[int, dict[int, str]] = field(default_factory=dict)
    reasons: dict[int, list[str]] = field(default_factory=dict)

    def add(self, signatures: list[Signature], digest: str) -> None:
        """Check the new signatures against every authority (stopping once the threshold holds,
        when it is 1: the first verifying signature is enough, as before several authorities)."""
        start = len(self.signatures)
        self.signatures.extend(signatures)
        for si in range(start, len(self.signatures)):
            sig = self.signatures[si]
            for ai, authority in enumerate(self.authorities):
                if self.threshold == 1 and self.satisfied():
                    return
                try:
                    who = authority.verify(sig, digest)
                    if self.check is not None:
                        self.check(sig)
                except VerificationError as e:
                    self.reasons.setdefault(ai, []).append(f"{sig.where}: {e}")
                    continue
                except Exception as e:  # hostile input must never crash or pass verification
                    log.warning("unexpected error verifying %s: %s", sig.where, e, exc_info=True)
                    self.reasons.setdefault(ai, []).append(f"{sig.where}: unusable ({type(e).__name__}: {e})")
                    continue
                self.verified.setdefault(ai, {})[si] = f"{sig.how} (signed by {who})"

    def matching(self) -> dict[int, int]:
        """authority index -> the distinct signature index it is counted for."""
        owner: dict[int, int] = {}  # signature -> authority

        def augment(ai: int, seen: set[int]) -> bool:
            for si in self.verified.get(ai, {}):
                if si in seen:
                    continue
                seen.add(si)
                if si not in owner or augment(owner[si], seen):
                    owner[si] = ai
                    return True
            return False

        for ai in sorted(self.verified):
            augment(ai, set())
        return {ai: si for si, ai in owner.items()}

    def satisfied(self) -> bool:
        return len(self.matching()) >= self.threshold

    def successes(self) -> list[str]:
        """The counted signatures' messages, in authority order."""
        return [self.verified[ai][si] for ai, si in sorted(self.matching().items())]

    def summary(self) -> str:
        """`k of n authorities verified (threshold t): A, B; not verified: C`, for several."""
        counted = self.matching()
        names = [self.authorities[ai].name for ai in sorted(counted)]
        missing = [a.name for ai, a in enumerate(self.authorities) if ai not in counted]
        out = (
            f"{len(counted)} of {len(self.authorities)} authorities verified (threshold {self.threshold})"
            + (f": {', '.join(names)}" if names else "")
        )
        if missing:
            out += f"; not verified: {', '.join(missing)}"
        return out

    def failures(self) -> list[str]:
        """Why authorities did not count: their reasons, named when the rule has several."""
        counted = self.matching()
        if len(self.authorities) == 1:
            return list(self.reasons.get(0, []))
        out: list[str] = []
        for ai, authority in enumerate(self.authorities):
            if ai in counted:
                continue
            if ai in self.verified:  # verified only signatures another authority is counted for
                out.append(f"{authority.name}: verified no signature of its own")
            else:
                reasons = self.reasons.get(ai) or ["no signature"]
                out.append(f"{authority.name}: " + "; ".join(reasons))
        return out
