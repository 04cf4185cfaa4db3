"""The verification engine behind `machine.ImageService/Verify` and Pull's policy check.

`ImageVerifier.verify(ref)` applies the first matching rule: no rule -> not verified
("no matched rule", or PERMISSION_DENIED with `noMatch: deny`); skip -> not verified; deny ->
PERMISSION_DENIED; otherwise the image's digest (a tag is resolved with a HEAD) must carry a
signature the rule accepts, found by `discovery` and checked by the rule's verifier, else
PERMISSION_DENIED saying why. Registry trouble is raised as the registry client's error
(UNAVAILABLE, NOT_FOUND, UNAUTHENTICATED...), never turned into a verdict.

A keyless verdict names the trust root it was checked against (`; trust root: refreshed
2026-12-07T10:00Z`): which root that is, and when it changes, is `trustroots.TrustRoots`'s call.

A verdict that did not need the registry (no match, skip) carries the pinned reference only if
the request was already pinned: resolving a tag just to echo it back would cost a round trip
and CRI pulls the original reference when `verified` is false anyway.

A rule's authorities are counted against its threshold (threshold.py) over every discovery stage
until it holds; its attestation requirements (attest.py) are then checked against the bundle
referrers found and, if needed, the legacy `.att` tag. In a rule with attestations, a satisfied
requirement also counts for the authority that signed it, as its signature would (as
policy-controller's authorities with an `attestations` block and Kyverno's `attestations` check
attestations instead of signatures): an image that carries only attestations verifies when they
satisfy the requirements and their signers meet the threshold. Not under checkDockerReference,
whose repository an in-toto statement does not name. In warn mode (the rule's `mode`, else
`verification.mode`), what would be PERMISSION_DENIED (a failed check, a deny rule, noMatch deny)
is `verified: true` with `warned` set and a message that starts with the failure; registry
errors stay errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sigstore.errors import VerificationError

from imaged.errors import FailedPrecondition, ImagedError, PermissionDenied, Unavailable
from imaged.registry.auth import Credentials, HostAuth, HostLogin
from imaged.registry.reference import Reference, canonical_repository, parse
from imaged.verdicts import WARN_NOTE
from imaged.verify.attest import AttestationResult, check_requirement
from imaged.verify.cache import Outcome, VerdictCache
from imaged.verify.cel import CelEvaluator, evaluator
from imaged.verify.config import AttestationRule, Mode, Rule, VerificationConfig, config_warnings
from imaged.verify.discovery import STAGES, Found, RegistryAPI, discover_legacy_attestations
from imaged.verify.matching import Glob, PlainHttp
from imaged.verify.material import (
    SIGN_PREDICATE,
    AttestationMaterial,
    Authority,
    BundleSignature,
    Envelope,
    Signature,
    SimpleSigning,
)
from imaged.verify.payload import check_docker_reference
from imaged.verify.threshold import Tally
from imaged.verify.trust import TrustRoot, TrustRootError
from imaged.verify.trustroots import TrustRoots, TrustState
from imaged.verify.verifiers import NO_ROOT_YET, build_authorities

log = logging.getLogger(__name__)

MAX_MESSAGE = 4000


class RegistryClientLike(RegistryAPI, Protocol):
    """`RegistryAPI` plus per-request credentials (what `RegistryClient` offers)."""

    def with_credentials(self, host: str, username: str, password: str) -> RegistryAPI: ...

    def request_credentials_only(self) -> RegistryClientLike: ...

    def with_auth(self, host: str, creds: Credentials) -> RegistryAPI: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Verify response: `digested_ref` is `repository@sha256:...` when known, else ""."""

    verified: bool
    message: str
    digested_ref: str
    # verified only because the deciding rule (or noMatch) is in warn mode: `message` is the failure
    warned: bool = False
    rule: str = ""  # the matched rule's fingerprint, when verified (recorded with the image)


@dataclass(frozen=True)
class MatchedRule:
    """A configured rule ready to apply: its position, pattern and verifier."""

    index: int
    rule: Rule
    glob: Glob
    authorities: tuple[Authority, ...]
    fingerprint: str  # rule content and trust root: the verdict cache key
    mode: Mode = "enforce"  # the rule's, else the configuration's
    # Keyless authorities compiled without a root (none yet): they verify nothing, so a failure
    # is UNAVAILABLE (they might have verified), a success the keys' alone.
    pending: bool = False

    @property
    def action(self) -> Literal["verify", "skip", "deny"]:
        return "deny" if self.rule.deny else "skip" if self.rule.skip else "verify"

    def describe(self) -> str:
        return f"rule {self.index} ({self.glob.pattern})"


@dataclass(frozen=True)
class _Policy:
    config: VerificationConfig
    rules: tuple[MatchedRule, ...]
    trust: TrustState | None  # None: no keyless rule, or no root yet (keyless verifiers are None)


def _unusable(e: TrustRootError) -> FailedPrecondition:
    return FailedPrecondition(f"verification trusted root unusable: {e}")


def _compile(config: VerificationConfig, trust: TrustState | None, plain_http: PlainHttp | None) -> _Policy:
    """Rules ready to apply. A keyless rule's fingerprint (its verdicts' cache key) includes the
    root's: verdicts reached under another root are never served under this one. Without a root
    yet, a keyless rule's keyless authorities verify nothing (`pending`): its keys may be enough,
    and `_with_current_trust` recompiles it once a root is there. `plain_http` tells rules which
    port is a registry's default (see `matching`)."""
    rules = []
    for i, rule in enumerate(config.rules):
        content = rule.model_dump_json(by_alias=True)
        pending = bool(rule.keyless_authorities()) and trust is None
        content += "\0no trust root" if pending else trust.root.fingerprint if trust is not None else ""
        authorities = build_authorities(rule, trust.root if trust is not None else None)
        rules.append(
            MatchedRule(
                index=i,
                rule=rule,
                glob=Glob.compile(rule.image, plain_http),
                authorities=authorities,
                fingerprint=hashlib.sha256(content.encode()).hexdigest(),
                mode=rule.mode or config.mode,
                pending=pending,
            )
        )
    return _Policy(config, tuple(rules), trust)


def _credentials_id(
    credentials: HostLogin | None,
    configured: bool = True,
    auth: HostAuth | None = None,
) -> str:
    """A digest standing for the request's credentials in cache keys (never the password itself),
    and whether the configured ones were lent too: a verdict reached with the node's credentials
    must not answer a caller who may not use them."""
    mode = "" if configured else "request-only:"
    if auth is not None and auth.host:
        return mode + hashlib.sha256(f"{auth.host}\0{auth.credentials.fingerprint}".encode()).hexdigest()
    if credentials is None or not credentials[0]:
        return mode
    return mode + hashlib.sha256("\0".join(credentials).encode()).hexdigest()


def _truncate(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _names_repository(repository: str, plain_http: PlainHttp | None) -> Callable[[Signature], None]:
    """checkDockerReference: a signature counts only if its signed payload names `repository`."""

    def check(sig: Signature) -> None:
        if not isinstance(sig, SimpleSigning):
            raise VerificationError(
                "a bundle's in-toto statement names no repository (its subject is a digest), "
                "and the rule has checkDockerReference"
            )
        check_docker_reference(sig.payload, repository, plain_http)

    return check


class ImageVerifier:
    """Applies the `verification` rules to image references (see the module docstring)."""

    def __init__(
        self,
        config: VerificationConfig,
        registry: RegistryClientLike,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_cache_hit: Callable[[], None] | None = None,
        trust: TrustRoots | None = None,
        cel: CelEvaluator | None = None,
        quiet: bool = False,
        plain_http: PlainHttp | None = None,
    ) -> None:
        """`trust` is the daemon's manager (shared across reloads); without one, the root is
        `trustedRoot` or the embedded one, never refreshed. `plain_http(host)`: whether the
        registry client talks plain HTTP to `host` (so that rules see `host:80` as `host`); by
        default localhost and loopback, the client's default."""
        self._registry = registry
        self._plain_http = plain_http
        self._cel = cel
        self._on_cache_hit = on_cache_hit
        self._clock = clock
        self._own_trust = trust is None
        self._trust = trust if trust is not None else self._offline_trust(config)
        self._policy = _compile(config, self._initial_trust(config), plain_http)
        self._cache = self._new_cache(config)
        # quiet: a candidate policy (PolicyService.Test), whose warnings are not the daemon's
        for w in () if quiet else config_warnings(config):
            log.warning("verification config: %s", w)

    @staticmethod
    def _offline_trust(config: VerificationConfig) -> TrustRoots:
        try:
            return TrustRoots.offline(config)
        except TrustRootError as e:
            raise _unusable(e) from None

    def _initial_trust(self, config: VerificationConfig) -> TrustState | None:
        """The root now, if a keyless rule needs one (not loaded otherwise)."""
        if not any(r.keyless_authorities() for r in config.rules):
            return None
        try:
            return self._trust.current()
        except TrustRootError as e:
            raise _unusable(e) from None

    def _new_cache(self, config: VerificationConfig) -> VerdictCache:
        c = config.cache
        return VerdictCache(c.success_ttl, c.failure_ttl, c.max_entries, clock=self._clock)

    @property
    def config(self) -> VerificationConfig:
        return self._policy.config

    @property
    def trust_root(self) -> TrustRoot | None:
        """The root keyless rules were last compiled with."""
        return self._policy.trust.root if self._policy.trust is not None else None

    @property
    def trust(self) -> TrustRoots:
        return self._trust

    def warnings(self) -> list[str]:
        return config_warnings(self._policy.config)

    def reload(self, config: VerificationConfig) -> None:
        """Apply a new configuration; on error the old one stays. Clears the verdict cache."""
        trust = self._offline_trust(config) if self._own_trust else self._trust
        old, self._trust = self._trust, trust
        try:
            policy = _compile(config, self._initial_trust(config), self._plain_http)
        except BaseException:
            self._trust = old
            raise
        self._policy = policy
        self._cache = self._new_cache(config)
        for w in config_warnings(config):
            log.warning("verification config: %s", w)

    def match(self, ref: str | Reference) -> MatchedRule | None:
        """The first rule whose pattern matches the reference's repository, or None.

        Raises InvalidArgument for an unparsable reference string.
        """
        r = parse(ref) if isinstance(ref, str) else ref
        repository = canonical_repository(r.repository, self._plain_http)
        for rule in self._policy.rules:
            if rule.glob.matches_canonical(repository):
                return rule
        return None

    def admit(self, ref: Reference, pinned: str = "") -> MatchedRule | Verdict:
        """The verify rule that decides `ref`, or the verdict reached without the network: no rule
        (noMatch allows it), skip, and in warn mode deny or `noMatch: deny`; PermissionDenied for
        a deny rule or an unmatched image under `noMatch: deny` in enforce mode. `pinned` is what
        such a verdict carries as `digested_ref`."""
        matched = self.match(ref)
        if matched is None:
            if self._policy.config.no_match == "deny":
                failure = f"no verification rule matches {ref.repository}, and noMatch is deny"
                return self._refuse(failure, self._policy.config.mode, "noMatch", pinned)
            return Verdict(False, "no matched rule", pinned)
        if matched.action == "deny":
            failure = f"verification denied by matched {matched.describe()} for {ref.repository}"
            return self._refuse(failure, matched.mode, matched.describe(), pinned)
        if matched.action == "skip":
            return Verdict(False, f"verification skipped by matched {matched.describe()}", pinned)
        return matched

    async def verify_archive_image(
        self,
        ref: Reference,
        digest: str,
        signatures: Sequence[Signature | Envelope],
        *,
        notes: Sequence[str] = (),
    ) -> Verdict:
        """Import's check of an image the archive names `ref`, whose digest is `digest`: under a
        verify rule, what the archive carries for that digest (`signatures`: signatures and
        attestations, as `cosign save` keeps them; `notes`: what was not looked at) is evaluated
        as a registry's would be (the same stages' checks, attestation requirements included) or,
        failing that, what the registry the name points at has."""
        pinned = ref.with_digest(digest)
        decided = self.admit(ref, pinned.pinned())
        if isinstance(decided, Verdict):
            return decided
        matched, trust, _ = await self._with_current_trust(self._policy, decided)
        found = "none" + "".join(f"; {n}" for n in notes)
        if signatures:
            envelopes = [s for s in signatures if isinstance(s, Envelope)]
            signed = [s for s in signatures if not isinstance(s, Envelope)]
            carried = Found("the archive", signed, list(notes))

            async def archive() -> Found:
                return carried

            async def archive_envelopes() -> tuple[list[Envelope], list[str]]:
                return envelopes, []

            outcome = await self._evaluate(pinned, digest, matched, (archive,), archive_envelopes)
            if outcome.verified:
                log.info("verified %s@%s from the archive: %s", ref.repository, digest, outcome.message)
                return self._verified(outcome.message, trust, pinned.pinned(), matched)
            found = outcome.message.removeprefix(f"{ref.repository}@{digest}: ")
        context = (
            f"{ref} ({digest}): no signature in the archive satisfies {matched.describe()} "
            f"(signatures in the archive: {found})"
        )
        try:
            verdict = await self.verify(pinned.pinned())
        except PermissionDenied as e:
            registry = e.message.removeprefix("image verification failed: ")
            raise PermissionDenied(
                _truncate(f"image verification failed: {context}, nor in the registry: {registry}")
            ) from None
        except ImagedError as e:  # the registry could not answer: an error, never a verdict
            raise type(e)(_truncate(f"{context}; asking the registry failed: {e.message}")) from None
        return verdict

    async def verify(
        self,
        image_ref: str,
        credentials: HostLogin | None = None,
        *,
        recorded: tuple[str, str] | None = None,
        configured_credentials: bool = True,
        auth: HostAuth | None = None,
    ) -> Verdict:
        """Verify `image_ref` under the rules. `credentials`: a user name and password; `auth`:
        credentials of any kind (a CRI pull's identity or registry token); with
        `configured_credentials=False` the registry sees only those, never the configured ones.

        `recorded` = (message, rule fingerprint) of a verdict recorded with a pinned image: it
        stands only if the rule matched now has that fingerprint (same rule, same trust material).
        """
        ref = parse(image_ref)
        pinned = ref.pinned() if ref.digest else ""
        policy = self._policy
        decided = self.admit(ref, pinned)
        if isinstance(decided, Verdict):
            return decided
        matched = decided
        base = self._registry if configured_credentials else self._registry.request_credentials_only()
        registry: RegistryAPI = base
        if auth is not None and auth.host:
            registry = base.with_auth(*auth)
        elif credentials is not None and credentials[0]:
            registry = base.with_credentials(*credentials)
        matched, trust, no_root = await self._with_current_trust(policy, matched)
        if ref.digest and recorded is not None and recorded[0] and recorded[1] == matched.fingerprint:
            return Verdict(True, recorded[0], ref.pinned(), rule=matched.fingerprint)
        digest = ref.digest or (await registry.resolve(ref)).digest
        pinned_ref = ref.with_digest(digest)
        # Per credentials too: a caller joining another's verification in flight, or finding its
        # verdict, would otherwise get what that caller's view of the registry gave (say its
        # UNAUTHENTICATED for a wrong password).
        key = (
            ref.repository,
            digest,
            matched.fingerprint,
            _credentials_id(credentials, configured_credentials, auth),
        )

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
        if not outcome.verified and matched.pending:  # the keys were not enough without a root
            raise Unavailable(
                _truncate(f"{no_root}; the rule's keys alone did not verify it: {outcome.message}")
            )
        if not outcome.verified:
            return self._refuse(
                f"image verification failed: {outcome.message}",
                matched.mode,
                matched.describe(),
                pinned_ref.pinned(),
            )
        return self._verified(outcome.message, trust, pinned_ref.pinned(), matched)

    @staticmethod
    def _verified(message: str, trust: TrustState | None, pinned: str, matched: MatchedRule) -> Verdict:
        """An allowing verdict of `matched`; a keyless one names the root it was checked against."""
        if trust is not None:
            message = f"{message}; trust root: {trust.describe()}"
        return Verdict(True, message, pinned, rule=matched.fingerprint)

    @staticmethod
    def _refuse(failure: str, mode: Mode, who: str, pinned: str) -> Verdict:
        """PERMISSION_DENIED with `failure`, or in warn mode a warned verdict that allows."""
        if mode != "warn":
            raise PermissionDenied(_truncate(failure))
        log.warning("warn mode: allowing what %s refuses: %s", who, failure)
        note = f"; {WARN_NOTE} ({who})"
        return Verdict(True, _truncate(failure[: MAX_MESSAGE - len(note)] + note), pinned, warned=True)

    async def _with_current_trust(
        self, policy: _Policy, matched: MatchedRule
    ) -> tuple[MatchedRule, TrustState | None, str]:
        """`matched` compiled against the root in use now (recompiled when it changed), that root,
        and "". Without a root yet: UNAVAILABLE, unless the rule's keys alone can meet its
        threshold (then `matched` as compiled without one, no root, and why). A rule without
        keyless authorities needs no root: as it is."""
        if not matched.rule.keyless_authorities():
            return matched, None, ""
        try:
            state = await self._trust.first_root()
        except TrustRootError as e:
            raise _unusable(e) from None
        if state is None:
            why = f"{NO_ROOT_YET}: {self._trust.last_error or 'no refresh has succeeded yet'}"
            rule = policy.rules[matched.index]
            if not rule.pending or len(rule.rule.key_authorities()) < rule.rule.threshold:
                raise Unavailable(why)
            return rule, None, why
        if policy.trust is not state:
            if policy.trust is not None and policy.trust.root is state.root:
                fresh = dataclasses.replace(policy, trust=state)  # same root, newer date
            else:
                fresh = _compile(policy.config, state, self._plain_http)
            if self._policy is policy:  # not replaced by a reload meanwhile
                self._policy = fresh
            policy = fresh
        return policy.rules[matched.index], state, ""

    def _bound(self, matched: MatchedRule, ref: Reference) -> Callable[[Signature], None] | None:
        """What a signature must also satisfy: under checkDockerReference, name the repository."""
        if not matched.rule.check_docker_reference:
            return None
        return _names_repository(ref.repository, self._plain_http)

    async def _verify_digest(
        self, registry: RegistryAPI, ref: Reference, digest: str, matched: MatchedRule
    ) -> Outcome:
        stages = [functools.partial(stage, registry, ref, digest) for stage in STAGES]
        legacy = functools.partial(discover_legacy_attestations, registry, ref, digest)
        return await self._evaluate(ref, digest, matched, stages, legacy)

    async def _evaluate(
        self,
        ref: Reference,
        digest: str,
        matched: MatchedRule,
        stages: Sequence[Callable[[], Awaitable[Found]]],
        legacy_attestations: Callable[[], Awaitable[tuple[list[Envelope], list[str]]]],
    ) -> Outcome:
        """`matched`'s verdict on `digest` over what `stages` find, in order until the threshold
        holds, then (for a rule with attestations) the `legacy_attestations` if needed: a
        registry's discovery stages, or what an imported archive carries."""
        rule = matched.rule
        tally = Tally(matched.authorities, rule.threshold, check=self._bound(matched, ref))
        target = f"{ref.repository}@{digest}"
        notes: list[str] = []
        attestations: list[AttestationMaterial] = []
        for stage in stages:
            found = await stage()
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
        attested = bool(rule.attestations) and not rule.check_docker_reference
        if not tally.satisfied() and not attested:
            return Outcome(False, self._signature_failure(target, matched, tally, notes))
        extra: list[str] = []
        if rule.attestations:
            results = await self._check_attestations(
                ref, digest, matched, attestations, notes, legacy_attestations
            )
            failed = [r for r in results if not r.satisfied]
            reasons = "; ".join(f"{r.describe()}: " + "; ".join(r.reasons) for r in failed)
            if not tally.satisfied():
                # Attestation-only images: a satisfied requirement is its signer's statement about
                # this digest, so it counts for that authority (policy-controller, Kyverno).
                for r in results:
                    for signer, where, signed in r.credits:
                        tally.credit(signer, where, signed)
                if not tally.satisfied():
                    failure = self._signature_failure(target, matched, tally, notes)
                    if failed:
                        failure += (
                            f"; nor do attestations stand for them: {len(failed)} of the {len(results)} "
                            f"attestations {matched.describe()} requires are not satisfied: {reasons}"
                        )
                    return Outcome(False, failure)
            if failed:
                return Outcome(
                    False,
                    f"{target}: signed ({'; '.join(tally.successes())}), but {len(failed)} of the "
                    f"{len(results)} attestations {matched.describe()} requires are not satisfied: {reasons}",
                )
            extra = [r.message for r in results if r.message]
        several = len(matched.authorities) > 1
        summary = f"{matched.describe()}: {tally.summary()}" if several else matched.describe()
        return Outcome(True, f"{'; '.join(tally.successes() + extra)}; {summary}")

    async def _check_attestations(
        self,
        ref: Reference,
        digest: str,
        matched: MatchedRule,
        materials: list[AttestationMaterial],
        notes: list[str],
        legacy: Callable[[], Awaitable[tuple[list[Envelope], list[str]]]],
    ) -> list[AttestationResult]:
        cel = self._cel or evaluator()

        def signers(a: AttestationRule) -> tuple[int, ...]:
            allowed = matched.rule.attestation_signers(a)
            return tuple(range(len(matched.authorities))) if allowed is None else allowed

        def check(found: list[AttestationMaterial]) -> list[AttestationResult]:
            out = []
            for a in matched.rule.attestations:
                who = signers(a)
                authorities = tuple(matched.authorities[i] for i in who)
                out.append(check_requirement(a, authorities, found, digest, ref.repository, cel, indices=who))
            return out

        results = await asyncio.to_thread(check, materials)
        if all(r.satisfied for r in results):
            return results
        # Not all among the referrers: cosign's legacy layout, the `.att` tag, before refusing.
        envelopes, more = await legacy()
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
