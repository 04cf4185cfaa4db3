"""The `verification` configuration section: ordered image rules, trust root, cache.

The schema is the reference's `ImageVerificationConfig` (camelCase keys; snake_case names are
accepted too) with a few additions (`noMatch`, `trustedRoot`, `tufRefresh`, `cache`). Everything
the reference only discovered at verification time (regexes that do not compile, PEM that does
not parse, an unreadable trusted root) is refused at load, with the rule index in the error.

Regexes (`subjectRegex`, `issuerRegex`) have Go `MatchString` semantics as in cosign and the
reference: a *search* anywhere in the value, so `@example\\.com` also matches
`evil@example.com.attacker.net`; anchor them (`^...$`). `config_warnings` names unanchored ones.
They are compiled with Python's `re`, whose syntax is close to RE2's for ordinary patterns.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from imaged.config.base import Section
from imaged.verify.keys import UnusableKey, load_public_key
from imaged.verify.matching import Glob, pattern_problem

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(v: object) -> object:
    """Seconds as a number, or a Go-style duration string (`90s`, `5m`, `1h30m`, `500ms`)."""
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            return float(s)
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"invalid duration {v!r}: use seconds or a form like '30s', '5m', '1h30m'")
        return total
    return v


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class KeylessRule(Section):
    """Certificate identity (Fulcio keyless): OIDC issuer and subject, exact or by regex.

    When both the exact value and the regex are given, both must hold."""

    issuer: str | None = None
    issuer_regex: str | None = Field(default=None, alias="issuerRegex")
    subject: str | None = None
    subject_regex: str | None = Field(default=None, alias="subjectRegex")


class PublicKeyRule(Section):
    """A static key. Named `certificate` for reference compatibility; takes a PUBLIC KEY or a
    CERTIFICATE PEM block (the certificate's key is used; the certificate itself is not trusted
    as an identity)."""

    certificate: str | None = None


class Rule(Section):
    image: str = ""
    keyless: KeylessRule | None = None
    public_key: PublicKeyRule | None = Field(default=None, alias="publicKey")
    skip: bool = False
    deny: bool = False
    # Also require the signed payload to name the repository being verified (a legacy
    # simple-signing payload's critical.identity.docker-reference): a signature then cannot be
    # copied with its image to another repository the rule covers. Bundles name no repository
    # (their in-toto subject is a digest), so under this setting only legacy signatures count.
    check_docker_reference: bool = Field(default=False, alias="checkDockerReference")

    @model_validator(mode="after")
    def _check(self) -> Rule:
        problems = rule_problems(self)
        if problems:
            # pydantic puts this under `rules[<index>]`, so each message names its rule.
            raise ValueError("; ".join(problems))
        return self


class CacheConfig(Section):
    """Verdict cache. Durations in seconds or Go form (`5m`); `maxEntries: 0` disables it."""

    success_ttl: Duration = Field(default=300.0, alias="successTtl")
    failure_ttl: Duration = Field(default=30.0, alias="failureTtl")
    max_entries: int = Field(default=1024, alias="maxEntries", ge=0, le=1_000_000)


class VerificationConfig(Section):
    rules: tuple[Rule, ...] = ()
    no_match: Literal["allow", "deny"] = Field(default="allow", alias="noMatch")
    # A Sigstore trusted_root.json (private Sigstore); unset = the public-good root embedded in
    # sigstore-python, which needs no network.
    trusted_root: str | None = Field(default=None, alias="trustedRoot")
    # Refresh the public-good root over TUF at first use (needs network; falls back to the
    # embedded root with a warning). Ignored when `trustedRoot` is set.
    tuf_refresh: bool = Field(default=False, alias="tufRefresh")
    cache: CacheConfig = CacheConfig()

    @model_validator(mode="after")
    def _check_trusted_root(self) -> VerificationConfig:
        if self.trusted_root is not None:
            from imaged.verify.trust import TrustRootError, load_trust_root_file

            try:
                load_trust_root_file(self.trusted_root)
            except TrustRootError as e:
                raise ValueError(f"trustedRoot: {e}") from None
        return self


def _regex_problem(name: str, value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as e:
        return f"keyless.{name} {value!r} is not a valid regular expression: {e}"
    return None


def rule_problems(rule: Rule) -> list[str]:
    """Every reason `rule` is unusable (the reference's checks plus regex and PEM parsing)."""
    out: list[str] = []
    if problem := pattern_problem(rule.image):
        out.append(problem)
    has_verifier = rule.keyless is not None or rule.public_key is not None
    if rule.skip and rule.deny:
        out.append("skip and deny are mutually exclusive")
    if (rule.skip or rule.deny) and has_verifier:
        out.append("a skip or deny rule cannot have keyless or publicKey")
    if not (rule.skip or rule.deny) and not has_verifier:
        out.append("a rule needs one of keyless or publicKey (or skip or deny)")
    if rule.keyless is not None and rule.public_key is not None:
        out.append("keyless and publicKey are mutually exclusive")
    if rule.check_docker_reference and not has_verifier:
        out.append("checkDockerReference applies to keyless and publicKey rules only")
    if (k := rule.keyless) is not None:
        if not k.issuer and not k.issuer_regex:
            out.append("keyless.issuer (or keyless.issuerRegex) is required")
        if not k.subject and not k.subject_regex:
            out.append("keyless.subject or keyless.subjectRegex is required")
        for name, value in (("issuerRegex", k.issuer_regex), ("subjectRegex", k.subject_regex)):
            if value and (problem := _regex_problem(name, value)):
                out.append(problem)
    if (p := rule.public_key) is not None:
        if not p.certificate or not p.certificate.strip():
            out.append("publicKey.certificate is required")
        else:
            try:
                load_public_key(p.certificate)
            except UnusableKey as e:
                out.append(f"publicKey.certificate: {e}")
    return out


def _unanchored(value: str) -> bool:
    return not (value.startswith(("^", r"\A")) and value.endswith("$") and not value.endswith(r"\$"))


def config_warnings(config: VerificationConfig) -> list[str]:
    """Valid but probably unintended: unanchored regexes and rules no request can reach."""
    out: list[str] = []
    globs: list[Glob] = []
    for i, rule in enumerate(config.rules):
        if (k := rule.keyless) is not None:
            for name, value in (("subjectRegex", k.subject_regex), ("issuerRegex", k.issuer_regex)):
                if value and _unanchored(value):
                    out.append(
                        f"rules[{i}] ({rule.image!r}): keyless.{name} {value!r} is not anchored "
                        "with ^...$; it matches anywhere in the value"
                    )
        glob = Glob.compile(rule.image)
        for j, earlier in enumerate(globs):
            if earlier.covers(glob):
                out.append(
                    f"rules[{i}] ({rule.image!r}) is never used: rules[{j}] ({earlier.pattern!r}) "
                    "matches every image it matches, and the first matching rule wins"
                )
                break
        globs.append(glob)
    return out


def config_advice(config: VerificationConfig) -> list[str]:
    """Valid, deliberate perhaps, but weaker than it looks: said by `imaged --check-config`.

    Rules see registry hosts by name. Two names of one server that cannot be told apart
    (`localhost` and `127.0.0.1`, two DNS names or addresses, a name hosts.toml sends elsewhere)
    are two registries to them: a policy whose signature (or deny) rules name hosts and lets
    unmatched images through can be walked around by writing the other name.
    """
    if config.no_match == "deny" or any(r.image and set(r.image) == {"*"} for r in config.rules):
        return []
    guarded = [f"rules[{i}] ({r.image!r})" for i, r in enumerate(config.rules) if not r.skip]
    if not guarded:
        return []
    shown = ", ".join(guarded[:3]) + (f" and {len(guarded) - 3} more" if len(guarded) > 3 else "")
    return [
        f"{shown} protect(s) images by registry host name while noMatch is allow: an image reached "
        "through another name of the same server (localhost and 127.0.0.1, another DNS name or "
        "address, a name that hosts.toml sends to the same server) matches no rule and is allowed "
        "unverified. Consider noMatch: deny, with skip rules for what may run unsigned"
    ]
