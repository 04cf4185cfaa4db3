"""The `verification` configuration section: ordered image rules, trust root, cache.

The schema is the reference's `ImageVerificationConfig` (camelCase keys; snake_case names are
accepted too) with a few additions (`noMatch`, `trustedRoot`, `tufRefresh`, `tuf`, `cache`). Everything
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


PUBLIC_GOOD_TUF_URL = "https://tuf-repo-cdn.sigstore.dev"
# python-tuf's own bound for root metadata (UpdaterConfig.root_max_length).
MAX_TUF_ROOT_SIZE = 512_000


class TufConfig(Section):
    """The TUF repository that keeps the keyless trust root fresh (see `trustroots.py`).

    `url` unset means the Sigstore public-good instance, whose initial TUF root ships with
    sigstore-python. Any other URL (a private Sigstore, an air-gapped mirror) needs its own
    initial `root`: TUF trusts nothing the repository says until it chains to that file."""

    url: str | None = None
    root: str | None = None
    refresh_interval: Duration = Field(default=86400.0, alias="refreshInterval")
    # A root older than this is reported (health, metric, log); 0 turns the report off.
    max_age: Duration = Field(default=7 * 86400.0, alias="maxAge")
    # Longest a refresh may take (all downloads together); it then fails and is retried later.
    timeout: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> TufConfig:
        if self.url is not None:
            u = self.url.rstrip("/")
            if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", u):
                raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
            if u != PUBLIC_GOOD_TUF_URL and self.root is None:
                raise ValueError(
                    f"root (the repository's initial root.json) is required for {u}: "
                    "only the public-good instance's ships with sigstore-python"
                )
        if self.refresh_interval < 1:
            raise ValueError("refreshInterval must be at least 1s")
        if self.timeout < 1:
            raise ValueError("timeout must be at least 1s")
        if self.root is not None:
            problem = tuf_root_problem(self.root)
            if problem:
                raise ValueError(f"root: {problem}")
        return self

    @property
    def source_url(self) -> str:
        return (self.url or PUBLIC_GOOD_TUF_URL).rstrip("/")


def tuf_root_problem(path: str) -> str | None:
    """Why `path` is not a usable initial TUF root (python-tuf checks its signatures at use)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TUF_ROOT_SIZE + 1)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if len(data) > MAX_TUF_ROOT_SIZE:
        return f"{path}: larger than {MAX_TUF_ROOT_SIZE} bytes"
    from tuf.api.metadata import Metadata

    try:
        kind = Metadata.from_bytes(data).signed.type
    except Exception as e:  # python-tuf raises DeserializationError, ValueError, TypeError
        return f"{path}: not TUF metadata: {e}"
    return None if kind == "root" else f"{path}: TUF {kind} metadata, not root"


class VerificationConfig(Section):
    rules: tuple[Rule, ...] = ()
    no_match: Literal["allow", "deny"] = Field(default="allow", alias="noMatch")
    # A Sigstore trusted_root.json. Alone (no `tuf.url`), it is THE root: a private Sigstore
    # without TUF, never refreshed. With `tuf.url`, it is the root used until the first refresh.
    trusted_root: str | None = Field(default=None, alias="trustedRoot")
    # Keep the root fresh over TUF (`tuf`): at start, every `tuf.refreshInterval` and on SIGHUP.
    # Off: no network; the last root saved by a refresh, else the embedded one, is used.
    tuf_refresh: bool = Field(default=True, alias="tufRefresh")
    tuf: TufConfig = TufConfig()
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
