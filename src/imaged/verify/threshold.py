"""Counting a rule's authorities over an image's signatures: any one, or k distinct ones.

With `threshold: k`, k distinct authorities must each verify a signature of its own, by a signer
of its own: k parties, not k copies. Discovery may find one signature several times (two identical
`.sig` layers, one bundle in two referrers or serialized otherwise, a referrer and the `.sig` tag),
and one party may sign twice; either counts once. Exact copies are checked once (`material_key`).
Then every verified signature joins its signer (a certificate identity, SAN and issuer, or a key's
SPKI) and its signature bytes into one group, and groups sharing a signer or a signature merge: an
authority counts for a group, and a group for one authority. Two keyless identities whose regexes
overlap cannot both count one signer, even when it signed twice (documented in the README). The
count is a maximum bipartite matching (authorities to groups), found by augmenting paths; a rule
has at most 16 authorities and discovery 32 signatures per stage.

In a rule with attestations, an attestation that satisfied one of them is its signer's statement
about this digest: `credit` counts it for that authority as a signature would (grouped alike, so
a party that signed and attested still counts once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sigstore.errors import VerificationError

from imaged.verify.material import Authority, Signature, Signed
from imaged.verify.signers import material_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attested:
    """An attestation counted as its signer's signature (see `Tally.credit`)."""

    where: str

    @property
    def how(self) -> str:
        return f"attested via {self.where}"


@dataclass
class Tally:
    """What each authority verified (signature index -> what verified) and why not."""

    authorities: tuple[Authority, ...]
    threshold: int
    # A further requirement on a verified signature (checkDockerReference); raises VerificationError.
    check: Callable[[Signature], None] | None = None
    signatures: list[Signature | Attested] = field(default_factory=list)
    verified: dict[int, dict[int, Signed]] = field(default_factory=dict)
    reasons: dict[int, list[str]] = field(default_factory=dict)
    copies: int = 0  # signatures found again (another layer, referrer or stage): not checked twice
    _seen: set[bytes] = field(default_factory=set)

    def add(self, signatures: list[Signature], digest: str) -> None:
        """Check the new signatures against every authority (stopping once the threshold holds,
        when it is 1: the first verifying signature is enough, as before several authorities)."""
        new: list[tuple[int, Signature]] = []
        for sig in signatures:
            key = material_key(sig)
            if key in self._seen:
                self.copies += 1
                continue
            self._seen.add(key)
            new.append((len(self.signatures), sig))
            self.signatures.append(sig)
        for si, sig in new:
            for ai, authority in enumerate(self.authorities):
                if self.threshold == 1 and self.satisfied():
                    return
                try:
                    signed = authority.check(sig, digest)
                    if self.check is not None:
                        self.check(sig)
                except VerificationError as e:
                    self.reasons.setdefault(ai, []).append(f"{sig.where}: {e}")
                    continue
                except Exception as e:  # hostile input must never crash or pass verification
                    log.warning("unexpected error verifying %s: %s", sig.where, e, exc_info=True)
                    self.reasons.setdefault(ai, []).append(f"{sig.where}: unusable ({type(e).__name__}: {e})")
                    continue
                self.verified.setdefault(ai, {})[si] = signed

    def credit(self, ai: int, where: str, signed: Signed) -> None:
        """Count an attestation by authority `ai` (found at `where`, already verified for this
        digest and satisfying a requirement of the rule) as that authority's signature."""
        self.verified.setdefault(ai, {})[len(self.signatures)] = signed
        self.signatures.append(Attested(where))

    def _groups(self) -> dict[tuple[int, int], int]:
        """(authority, signature index) -> the group of what it verified: signers and signature
        bytes, joined when one verification names both (union-find)."""
        parent: dict[tuple[str, str | bytes], tuple[str, str | bytes]] = {}

        def find(x: tuple[str, str | bytes]) -> tuple[str, str | bytes]:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for by_sig in self.verified.values():
            for signed in by_sig.values():
                a, b = find(("signer", signed.signer)), find(("signature", signed.signature))
                if a != b:
                    parent[b] = a
        roots: dict[tuple[str, str | bytes], int] = {}
        return {
            (ai, si): roots.setdefault(find(("signer", signed.signer)), len(roots))
            for ai, by_sig in self.verified.items()
            for si, signed in by_sig.items()
        }

    def matching(self) -> dict[int, int]:
        """authority index -> the signature index it is counted for, each in a group of its own."""
        groups = self._groups()
        owner: dict[int, int] = {}  # group -> authority

        def augment(ai: int, seen: set[int]) -> bool:
            for g in dict.fromkeys(groups[ai, si] for si in self.verified.get(ai, {})):
                if g in seen:
                    continue
                seen.add(g)
                if g not in owner or augment(owner[g], seen):
                    owner[g] = ai
                    return True
            return False

        for ai in sorted(self.verified):
            augment(ai, set())
        return {ai: next(si for si in self.verified[ai] if groups[ai, si] == g) for g, ai in owner.items()}

    def satisfied(self) -> bool:
        return len(self.matching()) >= self.threshold

    def successes(self) -> list[str]:
        """The counted signatures' messages, in authority order."""
        out = []
        for ai, si in sorted(self.matching().items()):
            out.append(f"{self.signatures[si].how} (signed by {self.verified[ai][si].who})")
        return out

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
            if ai in self.verified:  # verified only signers or signatures another one counts for
                out.append(
                    f"{authority.name}: verified no signature of its own (a signer, or a signature, "
                    "counts for one authority only)"
                )
            else:
                reasons = self.reasons.get(ai) or ["no signature"]
                out.append(f"{authority.name}: " + "; ".join(reasons))
        return out
