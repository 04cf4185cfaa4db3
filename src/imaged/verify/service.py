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
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from sigstore.errors import VerificationError

from imaged.errors import FailedPrecondition, PermissionDenied
from imaged.registry.auth import Credentials
from imaged.registry.reference import Reference, parse
from imaged.verify.cache import Outcome, VerdictCache
from imaged.verify.config import Rule, VerificationConfig, config_warnings
from imaged.verify.discovery import STAGES, RegistryAPI
from imaged.verify.matching import Glob
from imaged.verify.material import Signature, SignatureVerifier
from imaged.verify.trust import (
    TrustRoot,
    TrustRootError,
    embedded_public_good,
    load_trust_root_file,
    refresh_public_good,
)
from imaged.verify.verifiers import build_verifier

log = logging.getLogger(__name__)

MAX_MESSAGE = 4000


class RegistryClientLike(RegistryAPI, Protocol):
    """`RegistryAPI` plus per-request credentials (what `RegistryClient` offers)."""

    def with_credentials(self, host: str, username: str, password: str) -> RegistryAPI: ...

    def with_auth(self, host: str, creds: Credentials) -> RegistryAPI: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Verify response: `digested_ref` is `repository@sha256:...` when known, else ""."""

    verified: bool
    message: str
    digested_ref: str


@dataclass(frozen=True)
class MatchedRule:
    """A configured rule ready to apply: its position, pattern and verifier."""

    index: int
    rule: Rule
    glob: Glob
    verifier: SignatureVerifier | None
    fingerprint: str  # rule content and trust root: the verdict cache key

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
    if trust is None and any(r.keyless is not None for r in config.rules):
        trust = _load_trust(config)
    rules = []
    for i, rule in enumerate(config.rules):
        content = rule.model_dump_json(by_alias=True)
        if rule.keyless is not None and trust is not None:
            content += trust.fingerprint
        rules.append(
            MatchedRule(
                index=i,
                rule=rule,
                glob=Glob.compile(rule.image),
                verifier=build_verifier(rule, trust),
                fingerprint=hashlib.sha256(content.encode()).hexdigest(),
            )
        )
    return _Policy(config, tuple(rules), trust)


def _credentials_id(credentials: tuple[str, str, str] | None, auth: tuple[str, Credentials] | None) -> str:
    """A digest standing for the request's credentials in cache keys (never the password itself)."""
    if auth is not None and auth[0]:
        return hashlib.sha256(f"{auth[0]}\0{auth[1].fingerprint}".encode()).hexdigest()
    if credentials is None or not credentials[0]:
        return ""
    return hashlib.sha256("\0".join(credentials).encode()).hexdigest()


def _truncate(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _check(
    verifier: SignatureVerifier, signatures: list[Signature], digest: str
) -> tuple[str | None, list[str]]:
    """First signature the verifier accepts -> (success message, []), else (None, reasons)."""
    reasons: list[str] = []
    for sig in signatures:
        try:
            who = verifier.verify(sig, digest)
        except VerificationError as e:
            reasons.append(f"{sig.where}: {e}")
            continue
        except Exception as e:  # hostile input must never crash or pass verification
            log.warning("unexpected error verifying %s: %s", sig.where, e, exc_info=True)
            reasons.append(f"{sig.where}: unusable ({type(e).__name__}: {e})")
            continue
        return f"{sig.how} (signed by {who})", []
    return None, reasons


class ImageVerifier:
    """Applies the `verification` rules to image references (see the module docstring)."""

    def __init__(
        self,
        config: VerificationConfig,
        registry: RegistryClientLike,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_cache_hit: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._on_cache_hit = on_cache_hit
        self._clock = clock
        self._policy = _compile(config, None)
        self._cache = self._new_cache(config)
        self._tuf_done = False
        self._tuf_lock = asyncio.Lock()
        for w in config_warnings(config):
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

    async def verify(
        self,
        image_ref: str,
        credentials: tuple[str, str, str] | None = None,
        *,
        auth: tuple[str, Credentials] | None = None,
    ) -> Verdict:
        """Verify `image_ref` under the rules. `credentials` = (host, username, password); `auth` =
        (host, credentials of any kind: a CRI pull's identity or registry token)."""
        ref = parse(image_ref)
        pinned = ref.pinned() if ref.digest else ""
        policy = self._policy
        matched = self.match(ref)
        if matched is None:
            if policy.config.no_match == "deny":
                raise PermissionDenied(f"no verification rule matches {ref.repository}, and noMatch is deny")
            return Verdict(False, "no matched rule", pinned)
        if matched.action == "deny":
            raise PermissionDenied(
                f"verification denied by matched {matched.describe()} for {ref.repository}"
            )
        if matched.action == "skip":
            return Verdict(False, f"verification skipped by matched {matched.describe()}", pinned)
        registry: RegistryAPI = self._registry
        if auth is not None and auth[0]:
            registry = self._registry.with_auth(*auth)
        elif credentials is not None and credentials[0]:
            registry = self._registry.with_credentials(*credentials)
        if matched.rule.keyless is not None:
            matched = await self._maybe_refresh_trust(matched)
        digest = ref.digest or (await registry.resolve(ref)).digest
        pinned_ref = ref.with_digest(digest)
        # Per credentials too: a caller joining another's verification in flight, or finding its
        # verdict, would otherwise get what that caller's view of the registry gave (say its
        # UNAUTHENTICATED for a wrong password).
        key = (ref.repository, digest, matched.fingerprint, _credentials_id(credentials, auth))

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
            raise PermissionDenied(_truncate(f"image verification failed: {outcome.message}"))
        return Verdict(True, outcome.message, pinned_ref.pinned())

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
        verifier = matched.verifier
        assert verifier is not None
        target = f"{ref.repository}@{digest}"
        failures: list[str] = []
        notes: list[str] = []
        for stage in STAGES:
            found = await stage(registry, ref, digest)
            notes.extend(found.notes)
            if not found.signatures:
                continue
            success, reasons = await asyncio.to_thread(_check, verifier, found.signatures, digest)
            if success is not None:
                return Outcome(True, f"{success}; {matched.describe()}")
            failures.extend(reasons)
        expects = verifier.describe()
        if not failures:
            return Outcome(
                False,
                f"{target}: no signatures found; {matched.describe()} expects a {expects} "
                f"({'; '.join(notes)})",
            )
        return Outcome(
            False,
            f"{target}: no signature satisfies {matched.describe()}, which expects a {expects}: "
            + "; ".join(failures),
        )
