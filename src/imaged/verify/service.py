"""The verification engine behind `machine.ImageService/Verify` and Pull's policy check.

`ImageVerifier.verify(ref)` applies the first matching rule: no rule -> not verified
("no matched rule", or PERMISSION_DENIED with `noMatch: deny`); skip -> not verified; deny ->
PERMISSION_DENIED; otherwise the image's digest (a tag is resolved with a HEAD) must carry a
signature the rule accepts, found by `discovery` and checked by the rule's verifier, else
PERMISSION_DENIED saying why. Registry trouble is raised as the registry client's error
(UNAVAILABLE, NOT_FOUND, UNAUTHENTICATED...), never turned into a verdict.

A verdict that did not need the registry (no match, skip) carries the pinned reference only if
the request was already pinned: resolving a tag just to echo it back would cost a round trip
and CRI pulls the original reference when `verified` is false anyway.

A rule's authorities are counted against its threshold (threshold.py) over every discovery stage
until it holds; its attestation requirements (attest.py) are then checked against the bundle
referrers found and, if needed, the legacy `.att` tag. In warn mode (the rule's `mode`, else
`verification.mode`), what would be PERMISSION_DENIED (a failed check, a deny rule, noMatch deny)
is `verified: true` with `warned` set and a message that starts with the failure; registry
errors stay errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from imaged.errors import FailedPrecondition, PermissionDenied
from imaged.registry.reference import Reference, parse
from imaged.verify.attest import AttestationResult, check_requirement
from imaged.verify.cache import Outcome, VerdictCache
from imaged.verify.cel import CelEvaluator, evaluator
from imaged.verify.config import Mode, Rule, VerificationConfig, config_warnings
from imaged.verify.discovery import STAGES, RegistryAPI, discover_legacy_attestations
from imaged.verify.matching import Glob
from imaged.verify.material import (
    SIGN_PREDICATE,
    AttestationMaterial,
    Authority,
    BundleSignature,
    Signature,
    SignatureVerifier,
)
from imaged.verify.threshold import Tally
from imaged.verify.trust import (
    TrustRoot,
    TrustRootError,
    embedded_public_good,
    load_trust_root_file,
    refresh_public_good,
)
from imaged.verify.verifiers import build_authorities

log = logging.getLogger(__name__)

MAX_MESSAGE = 4000
# What a warned verdict's message says after the failure (callers may look for it).
WARN_NOTE = "allowed in warn mode"


class RegistryClientLike(RegistryAPI, Protocol):
    """`RegistryAPI` plus per-request credentials (what `RegistryClient` offers)."""

    def with_credentials(self, host: str, username: str, password: str) -> RegistryAPI: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Verify response: `digested_ref` is `repository@sha256:...` when known, else ""."""

    verified: bool
    message: str
    digested_ref: str
    # verified only because the deciding rule (or noMatch) is in warn mode: `message` is the failure
    warned: bool = False


@dataclass(frozen=True)
class MatchedRule:
    """A configured rule ready to apply: its position, pattern and verifier."""

    index: int
    rule: Rule
    glob: Glob
    authorities: tuple[Authority, ...]
    fingerprint: str  # rule content and trust root: the verdict cache key
    mode: Mode = "enforce"  # the rule's, else the configuration's

    @property
    def verifier(self) -> SignatureVerifier | None:
        """The first authority (the only one of a rule in the reference's form)."""
        return self.authorities[0] if self.authorities else None

    @property
    def action(self) -> Literal["verify", "skip", "deny"]:
        return "deny" if self.rule.deny else "skip" if self.rule.skip else "verify"

    def describe(self) -> str:
        return f"rule {self.index} ({self.glob.pattern})"


@dataclass(frozen=True)
class _Policy:
    config: VerificationConfig
    rules: tuple[MatchedRule, ...]
    trust: TrustRoot | None


def _load_trust(config: VerificationConfig) -> TrustRoot:
    try:
        if config.trusted_root:
            return load_trust_root_file(config.trusted_root)
        return embedded_public_good()
    except TrustRootError as e:
        raise FailedPrecondition(f"verification trusted root unusable: {e}") from None


def _compile(config: VerificationConfig, trust: TrustRoot | None) -> _Policy:
    if trust is None and any(r.keyless_authorities() for r in config.rules):
        trust = _load_trust(config)
    rules = []
    for i, rule in enumerate(config.rules):
        content = rule.model_dump_json(by_alias=True)
        if rule.keyless_authorities() and trust is not None:
            content += trust.fingerprint
        rules.append(
            MatchedRule(
                index=i,
                rule=rule,
                glob=Glob.compile(rule.image),
                authorities=build_authorities(rule, trust),
                fingerprint=hashlib.sha256(content.encode()).hexdigest(),
                mode=rule.mode or config.mode,
            )
        )
    return _Policy(config, tuple(rules), trust)


def _credentials_id(credentials: tuple[str, str, str] | None) -> str:
    """A digest standing for the request's credentials in cache keys (never the password itself)."""
    if credentials is None or not credentials[0]:
        return ""
    return hashlib.sha256("\0".join(credentials).encode()).hexdigest()


def _truncate(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


class ImageVerifier:
    """Applies the `verification` rules to image references (see the module docstring)."""

    def __init__(
        self,
        config: VerificationConfig,
        registry: RegistryClientLike,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_cache_hit: Callable[[], None] | None = None,
        cel: CelEvaluator | None = None,
        quiet: bool = False,
    ) -> None:
        self._registry = registry
        self._cel = cel
        self._on_cache_hit = on_cache_hit
        self._clock = clock
        self._policy = _compile(config, None)
        self._cache = self._new_cache(config)
        self._tuf_done = False
        self._tuf_lock = asyncio.Lock()
        # quiet: a candidate policy (PolicyService.Test), whose warnings are not the daemon's
        for w in () if quiet else config_warnings(config):
            log.warning("verification config: %s", w)

    def _new_cache(self, config: VerificationConfig) -> VerdictCache:
        c = config.cache
        return VerdictCache(c.success_ttl, c.failure_ttl, c.max_entries, clock=self._clock)

    @property
    def config(self) -> VerificationConfig:
        return self._policy.config

    @property
    def trust_root(self) -> TrustRoot | None:
        return self._policy.trust

    def warnings(self) -> list[str]:
        return config_warnings(self._policy.config)

    def reload(self, config: VerificationConfig) -> None:
        """Apply a new configuration; on error the old one stays. Clears the verdict cache."""
        policy = _compile(config, None)
        self._policy = policy
        self._cache = self._new_cache(config)
        self._tuf_done = False
        for w in config_warnings(config):
            log.warning("verification config: %s", w)

    def match(self, ref: str | Reference) -> MatchedRule | None:
        """The first rule whose pattern matches the reference's repository, or None.

        Raises InvalidArgument for an unparsable reference string.
        """
        r = parse(ref) if isinstance(ref, str) else ref
        for rule in self._policy.rules:
            if rule.glob.matches(r.repository):
                return rule
        return None

    async def verify(self, image_ref: str, credentials: tuple[str, str, str] | None = None) -> Verdict:
        """Verify `image_ref` under the rules. `credentials` = (host, username, password)."""
        ref = parse(image_ref)
        pinned = ref.pinned() if ref.digest else ""
        policy = self._policy
        matched = self.match(ref)
        if matched is None:
            if policy.config.no_match == "deny":
                failure = f"no verification rule matches {ref.repository}, and noMatch is deny"
                return self._refuse(failure, policy.config.mode, "noMatch", pinned)
            return Verdict(False, "no matched rule", pinned)
        if matched.action == "deny":
            failure = f"verification denied by matched {matched.describe()} for {ref.repository}"
            return self._refuse(failure, matched.mode, matched.describe(), pinned)
        if matched.action == "skip":
            return Verdict(False, f"verification skipped by matched {matched.describe()}", pinned)
        registry: RegistryAPI = self._registry
        if credentials is not None and credentials[0]:
            registry = self._registry.with_credentials(*credentials)
        if matched.rule.keyless_authorities():
            matched = await self._maybe_refresh_trust(matched)
        digest = ref.digest or (await registry.resolve(ref)).digest
        pinned_ref = ref.with_digest(digest)
        # Per credentials too: a caller joining another's verification in flight, or finding its
        # verdict, would otherwise get what that caller's view of the registry gave (say its
        # UNAUTHENTICATED for a wrong password).
        key = (ref.repository, digest, matched.fingerprint, _credentials_id(credentials))

        async def compute() -> Outcome:
            # Logged where a verification is really made, not on every cache hit (hot path).
            outcome = await self._verify_digest(registry, pinned_ref, digest, matched)
            if outcome.verified:
                log.info("verified %s@%s: %s", ref.repository, digest, outcome.message)
            else:  # the message names the image already
                log.info("refused %s", outcome.message)
            return outcome

        outcome = self._cache.peek(key)
        if outcome is not None:
            if self._on_cache_hit is not None:
                self._on_cache_hit()
        else:
            outcome = await self._cache.get(key, compute)
        if not outcome.verified:
            return self._refuse(
                f"image verification failed: {outcome.message}",
                matched.mode,
                matched.describe(),
                pinned_ref.pinned(),
            )
        return Verdict(True, outcome.message, pinned_ref.pinned())

    @staticmethod
    def _refuse(failure: str, mode: Mode, who: str, pinned: str) -> Verdict:
        """PERMISSION_DENIED with `failure`, or in warn mode a warned verdict that allows."""
        if mode != "warn":
            raise PermissionDenied(_truncate(failure))
        log.warning("warn mode: allowing what %s refuses: %s", who, failure)
        note = f"; {WARN_NOTE} ({who})"
        return Verdict(True, _truncate(failure[: MAX_MESSAGE - len(note)] + note), pinned, warned=True)

    async def _maybe_refresh_trust(self, matched: MatchedRule) -> MatchedRule:
        """With `tufRefresh`, fetch the public-good root once before the first keyless check."""
        config = self._policy.config
        if not config.tuf_refresh or config.trusted_root or self._tuf_done:
            return matched
        async with self._tuf_lock:
            if not self._tuf_done:
                try:
                    trust = await asyncio.to_thread(refresh_public_good)
                except TrustRootError as e:
                    log.warning("%s; using the embedded public-good trusted root", e)
                else:
                    if self._policy.config is config:
                        self._policy = _compile(config, trust)
                self._tuf_done = True
        return self._policy.rules[matched.index] if self._policy.config is config else matched

    async def _verify_digest(
        self, registry: RegistryAPI, ref: Reference, digest: str, matched: MatchedRule
    ) -> Outcome:
        rule = matched.rule
        tally = Tally(matched.authorities, rule.threshold)
        target = f"{ref.repository}@{digest}"
        notes: list[str] = []
        attestations: list[AttestationMaterial] = []
        for stage in STAGES:
            found = await stage(registry, ref, digest)
            notes.extend(found.notes)
            signatures: list[Signature] = []
            for sig in found.signatures:
                if isinstance(sig, BundleSignature) and sig.predicate_type != SIGN_PREDICATE:
                    attestations.append(sig)
                    if sig.is_attestation:  # the referrer says it is one: not tried as a signature
                        notes.append(f"{sig.where} is an attestation ({sig.predicate_type}), not a signature")
                        continue
                signatures.append(sig)
            if signatures:
                await asyncio.to_thread(tally.add, signatures, digest)
            if tally.satisfied():
                break
        if not tally.satisfied():
            return Outcome(False, self._signature_failure(target, matched, tally, notes))
        messages = tally.successes()
        several = len(matched.authorities) > 1
        summary = f"{matched.describe()}: {tally.summary()}" if several else matched.describe()
        if rule.attestations:
            results = await self._check_attestations(registry, ref, digest, matched, attestations, notes)
            failed = [r for r in results if not r.satisfied]
            if failed:
                reasons = "; ".join(f"{r.describe()}: " + "; ".join(r.reasons) for r in failed)
                return Outcome(
                    False,
                    f"{target}: signed ({'; '.join(messages)}), but {len(failed)} of the "
                    f"{len(results)} attestations {matched.describe()} requires are not satisfied: {reasons}",
                )
            messages += [r.message for r in results if r.message]
        return Outcome(True, f"{'; '.join(messages)}; {summary}")

    async def _check_attestations(
        self,
        registry: RegistryAPI,
        ref: Reference,
        digest: str,
        matched: MatchedRule,
        materials: list[AttestationMaterial],
        notes: list[str],
    ) -> list[AttestationResult]:
        cel = self._cel or evaluator()

        def check(found: list[AttestationMaterial]) -> list[AttestationResult]:
            return [
                check_requirement(a, matched.authorities, found, digest, ref.repository, cel)
                for a in matched.rule.attestations
            ]

        results = await asyncio.to_thread(check, materials)
        if all(r.satisfied for r in results):
            return results
        # Not all among the referrers: cosign's legacy layout, the `.att` tag, before refusing.
        envelopes, more = await discover_legacy_attestations(registry, ref, digest)
        notes.extend(more)
        if envelopes:
            results = await asyncio.to_thread(check, [*materials, *envelopes])
        return results

    @staticmethod
    def _signature_failure(target: str, matched: MatchedRule, tally: Tally, notes: list[str]) -> str:
        failures = tally.failures()
        if len(matched.authorities) == 1:
            expects = matched.authorities[0].describe()
            if not failures:
                return (
                    f"{target}: no signatures found; {matched.describe()} expects a {expects} "
                    f"({'; '.join(notes)})"
                )
            return (
                f"{target}: no signature satisfies {matched.describe()}, which expects a {expects}: "
                + "; ".join(failures)
            )
        expects = "; ".join(f"{a.name}: {a.describe()}" for a in matched.authorities)
        if not tally.signatures:
            return (
                f"{target}: no signatures found; {matched.describe()} expects {matched.rule.threshold} of "
                f"{len(matched.authorities)} authorities ({expects}) ({'; '.join(notes)})"
            )
        return f"{target}: {tally.summary()} under {matched.describe()}: " + "; ".join(failures)
