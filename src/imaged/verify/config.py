"""The `verification` configuration section: ordered image rules, trust root, cache.

The schema is the reference's `ImageVerificationConfig` (camelCase keys; snake_case names are
accepted too) with a few additions (`noMatch`, `trustedRoot`, `tufRefresh`, `tuf`, `cache`). Everything
the reference only discovered at verification time (regexes that do not compile, PEM that does
not parse, an unreadable trusted root) is refused at load, with the rule index in the error.

Regexes (`subjectRegex`, `issuerRegex`) have Go `MatchString` semantics as in cosign and the
reference: a *search* anywhere in the value, so `@example\\.com` also matches
`evil@example.com.attacker.net`; anchor them (`^...$`). `config_warnings` names unanchored ones.
They are compiled with Python's `re`, whose syntax is close to RE2's for ordinary patterns.

A rule names its authorities with `keyless` and `publicKey`, each a single mapping (the
reference's form) or a list: any one of them verifies, or, with `threshold: k`, k distinct ones
(each by a signature and a signer of its own; the same key twice is refused). `attestations`
adds in-toto statements the image must carry, signed by one of the rule's authorities (or of
those its `authorities` names), whose predicate satisfies a CEL expression (compiled here, at
load). `mode: warn` (globally or per rule) evaluates as `enforce` and then allows.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from imaged.section import Section
from imaged.verify.claims import CLAIMS, split_claim_key
from imaged.verify.files import read_regular_file
from imaged.verify.keys import UnusableKey, load_public_key, spki_der
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
Mode = Literal["enforce", "warn"]
MAX_AUTHORITIES = 16
MAX_ATTESTATIONS = 8
# Each rule is compiled (keys, regexes, CEL) at load, for the daemon and for every PolicyService.Test
# candidate; globs keep real policies far below this.
MAX_RULES = 256


class KeylessRule(Section):
    """Certificate identity (Fulcio keyless): OIDC issuer and subject, exact or by regex.

    When both the exact value and the regex are given, both must hold. `claims` constrains
    Fulcio's CI extensions (`sourceRepositoryURI`, `sourceRepositoryRef`, `buildSignerURI`,
    `buildTrigger`, `runnerEnvironment`...; see claims.py), each exact or as `<name>Regex`."""

    name: str | None = None  # how messages call this authority; default: its issuer and subject
    issuer: str | None = None
    issuer_regex: str | None = Field(default=None, alias="issuerRegex")
    subject: str | None = None
    subject_regex: str | None = Field(default=None, alias="subjectRegex")
    claims: dict[str, str] = Field(default_factory=dict)


class PublicKeyRule(Section):
    """A static key. Named `certificate` for reference compatibility; takes a PUBLIC KEY or a
    CERTIFICATE PEM block (the certificate's key is used; the certificate itself is not trusted
    as an identity)."""

    name: str | None = None  # how messages call this key; default: its algorithm and hash
    certificate: str | None = None


class AttestationRule(Section):
    """An in-toto attestation the image must carry: its predicate type and a CEL expression over it
    (variables `predicate`, `predicateType`, `statement`, `image`; see verify/cel.py)."""

    predicate_type: str = Field(default="", alias="predicateType")
    policy: str = "true"
    # Who may sign it, by the rule's authority names (`name`, else `keyless[0]`, `publicKey`...):
    # under a threshold, the party that must vouch for this statement. Unset: any of them.
    authorities: tuple[str, ...] | None = None


class Rule(Section):
    image: str = ""
    mode: Mode | None = None  # unset: `verification.mode`
    # One mapping (the reference's form) or a list of them: several authorities.
    keyless: KeylessRule | tuple[KeylessRule, ...] | None = None
    public_key: PublicKeyRule | tuple[PublicKeyRule, ...] | None = Field(default=None, alias="publicKey")
    threshold: int = Field(default=1, ge=1, le=MAX_AUTHORITIES)
    attestations: tuple[AttestationRule, ...] = ()
    skip: bool = False
    deny: bool = False
    # Also require the signed payload to name the repository being verified (a legacy
    # simple-signing payload's critical.identity.docker-reference): a signature then cannot be
    # copied with its image to another repository the rule covers. Bundles name no repository
    # (their in-toto subject is a digest), so under this setting only legacy signatures count.
    check_docker_reference: bool = Field(default=False, alias="checkDockerReference")

    def keyless_authorities(self) -> tuple[tuple[str, KeylessRule], ...]:
        """(name in messages and errors, spec) of each keyless authority."""
        return _named("keyless", self.keyless)

    def key_authorities(self) -> tuple[tuple[str, PublicKeyRule], ...]:
        return _named("publicKey", self.public_key)

    def authority_labels(self) -> list[tuple[str, ...]]:
        """What each authority may be called, in the verifiers' order (keyless first): its
        position (`keyless[0]`, `publicKey`) and its `name`, if any."""
        both: list[tuple[str, KeylessRule | PublicKeyRule]] = [
            *self.keyless_authorities(),
            *self.key_authorities(),
        ]
        return [(field, spec.name) if spec.name else (field,) for field, spec in both]

    def attestation_signers(self, requirement: AttestationRule) -> tuple[int, ...] | None:
        """Indices of the authorities that may sign `requirement`; None: any (checked at load)."""
        if requirement.authorities is None:
            return None
        labels = self.authority_labels()
        return tuple(i for i, names in enumerate(labels) if set(names) & set(requirement.authorities))

    @model_validator(mode="after")
    def _check(self) -> Rule:
        problems = rule_problems(self)
        if problems:
            # pydantic puts this under `rules[<index>]`, so each message names its rule.
            raise ValueError("; ".join(problems))
        return self


def _named(field: str, value: object) -> tuple[tuple[str, Any], ...]:
    if value is None:
        return ()
    if isinstance(value, tuple):
        return tuple((f"{field}[{i}]", v) for i, v in enumerate(value))
    return ((field, value),)


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
    initial `root`: TUF trusts nothing the repository says until it chains to that file.

    `url` is https, http (written out, as a registry mirror's `http://`: TUF's signatures, not
    the transport, protect the root) or `file:///path` (a repository copied onto the node).
    `caFile`, `certFile` and `keyFile` are for https only. They are not opened here, only at a
    refresh: a PolicyService.Test candidate is validated by this model too, and the daemon opens
    no file a client names."""

    url: str | None = None
    root: str | None = None
    # PEM CA certificates trusted for the repository's https server, besides the system's.
    ca_file: str | None = Field(default=None, alias="caFile")
    # A client certificate and its key (PEM) for a server that wants one (mutual TLS).
    cert_file: str | None = Field(default=None, alias="certFile")
    key_file: str | None = Field(default=None, alias="keyFile")
    refresh_interval: Duration = Field(default=86400.0, alias="refreshInterval")
    # A root older than this is reported (health, metric, log); 0 turns the report off.
    max_age: Duration = Field(default=7 * 86400.0, alias="maxAge")
    # Longest a refresh may take (all downloads together); it then fails and is retried later.
    timeout: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> TufConfig:
        if self.url is not None:
            u = self.url.rstrip("/")
            if "@" in u.split("://", 1)[-1].split("/", 1)[0]:  # not quoted: it holds a password
                raise ValueError(
                    "url must not hold credentials (user:password@): a TUF repository is read "
                    "anonymously, and the URL is part of directory names, the log and messages"
                )
            if u.startswith("file:"):
                _check_file_url(u)
            elif not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", u):
                raise ValueError(f"url must be an http(s) URL or file:///path, got {self.url!r}")
            if u != PUBLIC_GOOD_TUF_URL and self.root is None:
                raise ValueError(
                    f"root (the repository's initial root.json) is required for {u}: "
                    "only the public-good instance's ships with sigstore-python"
                )
        for name, value in (
            ("caFile", self.ca_file),
            ("certFile", self.cert_file),
            ("keyFile", self.key_file),
        ):
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile must be given together")
        if self.ca_file is not None or self.cert_file is not None:
            scheme = self.source_url.split(":", 1)[0]
            if scheme != "https":
                given = "caFile" if self.ca_file is not None else "certFile"
                raise ValueError(
                    f"{given} is for an https:// url; url is {scheme}:// (TLS settings have no use there)"
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


def _check_file_url(url: str) -> None:
    """`file:///absolute/directory`, as an operator writes it: no host, no query, no `..`."""
    if not url.startswith("file:///"):
        raise ValueError(
            f"url {url!r}: a file URL is file:///absolute/path (three slashes, no host): the "
            "directory holding the repository's timestamp.json"
        )
    if re.search(r"[?#\s]", url):
        raise ValueError(f"url {url!r}: a file URL names a directory (no query, fragment or whitespace)")
    parts = urllib.parse.unquote(url[len("file://") :]).split("/")
    if any(p in (".", "..") or "\0" in p for p in parts):
        raise ValueError(f"url {url!r}: write the directory without . or .. segments")


def tuf_root_problem(path: str) -> str | None:
    """Why `path` is not a usable initial TUF root (python-tuf checks its signatures at use)."""
    try:
        data = read_regular_file(path, MAX_TUF_ROOT_SIZE)
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
    # warn: every verdict that would refuse (failed check, deny rule, noMatch deny) allows instead,
    # with `verified: true`, a message starting with the failure, a warning and a metric.
    mode: Mode = "enforce"
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

    @field_validator("rules", mode="before")
    @classmethod
    def _few_rules(cls, v: object) -> object:
        """Counted before any rule is compiled: a long list must not cost its compilation first."""
        if isinstance(v, list | tuple) and len(v) > MAX_RULES:
            raise ValueError(
                f"at most {MAX_RULES} rules, not {len(v)}: one rule covers many images with a glob "
                "(`ghcr.io/org/*`)"
            )
        return v

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
        return f"{name} {value!r} is not a valid regular expression: {e}"
    return None


def _keyless_problems(name: str, k: KeylessRule) -> list[str]:
    out: list[str] = []
    if not k.issuer and not k.issuer_regex:
        out.append(f"{name}.issuer (or {name}.issuerRegex) is required")
    if not k.subject and not k.subject_regex:
        out.append(f"{name}.subject or {name}.subjectRegex is required")
    for field, value in (("issuerRegex", k.issuer_regex), ("subjectRegex", k.subject_regex)):
        if value and (problem := _regex_problem(f"{name}.{field}", value)):
            out.append(problem)
    for key, value in k.claims.items():
        split = split_claim_key(key)
        if split is None:
            out.append(
                f"{name}.claims.{key} is not a Fulcio claim (known: {', '.join(CLAIMS)}; "
                "add Regex for a regular expression)"
            )
        elif not value:
            out.append(f"{name}.claims.{key} is empty")
        elif split[1] and (problem := _regex_problem(f"{name}.claims.{key}", value)):
            out.append(problem)
    return out


def _attestation_problems(i: int, a: AttestationRule) -> list[str]:
    name = f"attestations[{i}]"
    out: list[str] = []
    if not a.predicate_type:
        out.append(f"{name}.predicateType is required (for example https://slsa.dev/provenance/v1)")
    from imaged.verify.cel import CelError, compile_policy

    try:
        compile_policy(a.policy)
    except CelError as e:
        out.append(f"{name}.policy: {e}")
    return out


def rule_problems(rule: Rule) -> list[str]:
    """Every reason `rule` is unusable (the reference's checks plus regex, PEM and CEL parsing)."""
    out: list[str] = []
    if problem := pattern_problem(rule.image):
        out.append(problem)
    keyless, keys = rule.keyless_authorities(), rule.key_authorities()
    authorities = len(keyless) + len(keys)
    has_verifier = authorities > 0
    if rule.skip and rule.deny:
        out.append("skip and deny are mutually exclusive")
    if (rule.skip or rule.deny) and has_verifier:
        out.append("a skip or deny rule cannot have keyless or publicKey")
    if (rule.skip or rule.deny) and rule.attestations:
        out.append("a skip or deny rule cannot have attestations")
    if not (rule.skip or rule.deny) and not has_verifier:
        out.append("a rule needs one of keyless or publicKey (or skip or deny)")
    if rule.check_docker_reference and not has_verifier:
        out.append("checkDockerReference applies to keyless and publicKey rules only")
    if authorities > MAX_AUTHORITIES:
        out.append(f"a rule has at most {MAX_AUTHORITIES} authorities (keyless and publicKey entries)")
    if has_verifier and rule.threshold > authorities:
        out.append(
            f"threshold {rule.threshold} is more than the rule's {authorities} authorit"
            f"{'y' if authorities == 1 else 'ies'}: no image could ever verify"
        )
    if len(rule.attestations) > MAX_ATTESTATIONS:
        out.append(f"a rule requires at most {MAX_ATTESTATIONS} attestations")
    for name, k in keyless:
        out += _keyless_problems(name, k)
    seen_keys: dict[bytes, str] = {}
    for name, p in keys:
        if not p.certificate or not p.certificate.strip():
            out.append(f"{name}.certificate is required")
        else:
            try:
                spki = spki_der(load_public_key(p.certificate))
            except UnusableKey as e:
                out.append(f"{name}.certificate: {e}")
                continue
            if spki in seen_keys:  # one key is one signer: it would count once anyway
                out.append(f"{name} is the same key as {seen_keys[spki]}")
            seen_keys.setdefault(spki, name)
    names = [k.name for _, k in keyless if k.name] + [p.name for _, p in keys if p.name]
    if len(set(names)) != len(names):
        out.append("authority names must be distinct")
    labels = rule.authority_labels()
    for i, a in enumerate(rule.attestations):
        out += _attestation_problems(i, a)
        if a.authorities is None:
            continue
        if not a.authorities:
            out.append(f"attestations[{i}].authorities is empty (omit it: any of the rule's authorities)")
        for ref in a.authorities:
            found = [names for names in labels if ref in names]
            if len(found) != 1:
                known = ", ".join(f"{n[1]} ({n[0]})" if len(n) > 1 else n[0] for n in labels)
                why = "no authority" if not found else "more than one authority called"
                out.append(f"attestations[{i}].authorities: {why} {ref!r} in the rule (known: {known})")
    return out


def _unanchored(value: str) -> bool:
    return not (value.startswith(("^", r"\A")) and value.endswith("$") and not value.endswith(r"\$"))


def _matches_anything(regex: str) -> bool:
    """A regex every value matches (`.*`, `^.*$`, ``): it constrains nothing."""
    try:
        compiled = re.compile(regex)
    except re.error:
        return False
    return all(compiled.search(v) for v in ("", "x", "https://evil.example/x@y"))


def _may_share(a: tuple[str | None, str | None], b: tuple[str | None, str | None]) -> bool:
    """Whether one value can satisfy both (exact, regex) constraints. An exact value is tried
    against the other side; two regexes alone are assumed to overlap (undecidable in general)."""
    exact = {v for v in (a[0], b[0]) if v}
    if len(exact) > 1:
        return False
    if not exact:
        return True
    value = exact.pop()
    for regex in (a[1], b[1]):
        try:
            if regex and not re.search(regex, value):
                return False
        except re.error:
            return False
    return True


def _overlaps(rule: Rule) -> list[str]:
    """Pairs of the rule's keyless authorities one signer identity may satisfy both of."""
    out: list[str] = []
    keyless = rule.keyless_authorities()
    for i, (aname, a) in enumerate(keyless):
        for bname, b in keyless[i + 1 :]:
            if _may_share((a.issuer, a.issuer_regex), (b.issuer, b.issuer_regex)) and _may_share(
                (a.subject, a.subject_regex), (b.subject, b.subject_regex)
            ):
                out.append(f"{aname} and {bname}")
    return out


def _rule_name(i: int, rule: Rule) -> str:
    return f"rules[{i}] ({rule.image!r})"


def config_warnings(config: VerificationConfig) -> list[str]:
    """Valid but probably unintended: unanchored regexes, regexes and workflow identities that
    constrain too little, and rules no request can reach (logged at start and reload)."""
    out: list[str] = []
    globs: list[Glob] = []
    for i, rule in enumerate(config.rules):
        name = _rule_name(i, rule)
        for kname, k in rule.keyless_authorities():
            regexes = [("subjectRegex", k.subject_regex), ("issuerRegex", k.issuer_regex)]
            regexes += [(f"claims.{c}", v) for c, v in k.claims.items() if c.endswith("Regex")]
            for field, value in regexes:
                if not value:
                    continue
                if _matches_anything(value):
                    out.append(f"{name}: {kname}.{field} {value!r} matches any value; it constrains nothing")
                elif _unanchored(value):
                    out.append(
                        f"{name}: {kname}.{field} {value!r} is not anchored "
                        "with ^...$; it matches anywhere in the value"
                    )
            workflow = f"{k.subject or ''} {k.subject_regex or ''}"
            if "/.github/workflows/" in workflow and not any(
                c.startswith("sourceRepository") for c in k.claims
            ):
                out.append(
                    f"{name}: {kname} names a GitHub workflow without a sourceRepositoryURI (or Ref) "
                    "claim: a reusable workflow's identity passes for every repository that calls it"
                )
        if rule.threshold > 1:
            for pair in _overlaps(rule):
                out.append(
                    f"{name}: {pair} may accept the same signer identity (issuer and subject); under "
                    f"threshold {rule.threshold} one signer counts for one of them only, however often "
                    "it signs"
                )
        glob = Glob.compile(rule.image)
        for j, earlier in enumerate(globs):
            if earlier.covers(glob):
                out.append(
                    f"{name} is never used: rules[{j}] ({earlier.pattern!r}) "
                    "matches every image it matches, and the first matching rule wins"
                )
                break
        globs.append(glob)
    return out


def open_policy_warnings(config: VerificationConfig) -> list[str]:
    """What lets images through unverified: warn mode, skip-everything rules, noMatch allow without
    a catch-all rule. Deliberate in many configurations, so only `--check-config` reports them."""
    out: list[str] = []
    everything = Glob.compile("*")
    if config.mode == "warn":
        out.append("mode is warn: no rule refuses anything (failures are logged and allowed)")
    for i, rule in enumerate(config.rules):
        if rule.mode == "warn" and config.mode != "warn":
            out.append(f"{_rule_name(i, rule)} is in warn mode: its failures are logged and allowed")
        if rule.skip and Glob.compile(rule.image).covers(everything):
            out.append(f"{_rule_name(i, rule)} skips verification for every image that reaches it")
    if config.no_match == "allow" and not any(Glob.compile(r.image).covers(everything) for r in config.rules):
        out.append(
            "noMatch is allow: an image no rule matches is pulled without verification "
            '(end with an `image: "*"` rule, or set noMatch: deny)'
        )
        for i, rule in enumerate(config.rules):
            if not rule.skip and (ported := Glob.compile(rule.image).with_any_port()):
                out.append(
                    f"{_rule_name(i, rule)}: a `*` in a host does not cover a port, so the same "
                    "host names with a port (`:8443`) match no rule and are allowed unverified while "
                    f"noMatch is allow; write {ported!r} to cover them too"
                )
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
