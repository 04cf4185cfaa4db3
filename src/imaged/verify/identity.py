"""Certificate identity policies for keyless rules, as sigstore-python policy objects.

Each policy has `verify(cert)` raising `sigstore.errors.VerificationError`, so they compose
with `sigstore.verify.policy.AllOf` and are handed straight to sigstore's `Verifier`. They are
ours rather than sigstore's `Identity`/`OIDCIssuer` because rules need regexes, and because
the issuer must be read the way Fulcio writes it today (extension .8, a DER UTF8String) with
the deprecated extension .1 (raw bytes) as fallback, refusing a certificate where they differ.

Regexes are searched, not fully matched (Go `MatchString`, as cosign and the reference do).
A certificate without any issuer extension has the issuer "" for regexes (cosign does the
same), so only a regex that matches the empty string (`^$`, `.*`) accepts one; such
certificates exist only from 2021 (see vector A5).
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from sigstore.errors import VerificationError
from sigstore.verify.policy import AllOf, VerificationPolicy

from imaged.verify.claims import CLAIMS, split_claim_key
from imaged.verify.config import KeylessRule

OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SAN_OTHERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def _der_utf8(data: bytes) -> str:
    """Decode a DER UTF8String (tag 0x0C), as Fulcio encodes extension .8 and otherName values."""
    if len(data) < 2 or data[0] != 0x0C:
        raise ValueError("not a DER UTF8String")
    n, pos = data[1], 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise ValueError("bad DER length")
        n, pos = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if pos + n != len(data):
        raise ValueError("DER length does not match")
    return data[pos:].decode("utf-8")


def subjects(cert: x509.Certificate) -> list[str]:
    """Every SAN value a rule's subject may name: email, URI, DNS, IP and Sigstore otherName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out: list[str] = []
    out += san.get_values_for_type(x509.RFC822Name)
    out += san.get_values_for_type(x509.UniformResourceIdentifier)
    out += san.get_values_for_type(x509.DNSName)
    out += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == SAN_OTHERNAME:
            try:
                out.append(_der_utf8(other.value))
            except (ValueError, UnicodeDecodeError):
                continue
    return out


def issuer(cert: x509.Certificate) -> str | None:
    """The OIDC issuer Fulcio recorded; None when the certificate has none.

    Raises VerificationError when the two extensions disagree (a forged or broken certificate).
    """
    v1 = v2 = None
    try:
        raw = cert.extensions.get_extension_for_oid(OIDC_ISSUER_V2).value
        v2 = _der_utf8(raw.value)  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pass
    except (ValueError, UnicodeDecodeError):
        raise VerificationError(
            "certificate's OIDC issuer extension (1.3.6.1.4.1.57264.1.8) is malformed"
        ) from None
    try:
        raw = cert.extensions.get_extension_for_oid(OIDC_ISSUER_V1).value
        v1 = raw.value.decode("utf-8")  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pass
    except UnicodeDecodeError:
        raise VerificationError(
            "certificate's OIDC issuer extension (1.3.6.1.4.1.57264.1.1) is malformed"
        ) from None
    if v1 is not None and v2 is not None and v1 != v2:
        raise VerificationError(f"certificate's two OIDC issuer extensions disagree ({v2!r} vs {v1!r})")
    return v2 if v2 is not None else v1


def _go_search(regex: re.Pattern[str], value: str) -> bool:
    """Go's `MatchString` on a value; one holding a newline never matches.

    Python's `$` also matches before a final newline, Go's only at the very end: `^dev@x\\.com$`
    would accept "dev@x.com\\n" here and not in cosign. No issuer or SAN Fulcio issues holds a
    newline, so refusing those is safe and keeps the two engines agreeing.
    """
    return "\n" not in value and regex.search(value) is not None


class IssuerPolicy:
    """The OIDC issuer equals `exact` and/or matches `regex` (searched)."""

    def __init__(self, *, exact: str | None = None, regex: str | None = None) -> None:
        if exact is None and regex is None:
            raise ValueError("IssuerPolicy needs exact or regex")
        self.exact = exact
        self.regex = re.compile(regex) if regex is not None else None

    def verify(self, cert: x509.Certificate) -> None:
        found = issuer(cert)
        if self.exact is not None and found != self.exact:
            shown = repr(found) if found is not None else "no issuer extension"
            raise VerificationError(f"certificate issuer mismatch: expected {self.exact!r}, found {shown}")
        if self.regex is not None and not _go_search(self.regex, found or ""):
            shown = repr(found) if found is not None else "no issuer extension"
            raise VerificationError(
                f"certificate issuer mismatch: expected a match of /{self.regex.pattern}/, found {shown}"
            )


class SubjectPolicy:
    """Some SAN equals `exact` and/or some SAN matches `regex` (searched)."""

    def __init__(self, *, exact: str | None = None, regex: str | None = None) -> None:
        if exact is None and regex is None:
            raise ValueError("SubjectPolicy needs exact or regex")
        self.exact = exact
        self.regex = re.compile(regex) if regex is not None else None

    def verify(self, cert: x509.Certificate) -> None:
        found = subjects(cert)
        if self.exact is not None and self.exact not in found:
            raise VerificationError(f"certificate subject mismatch: expected {self.exact!r}, found {found}")
        if self.regex is not None and not any(_go_search(self.regex, s) for s in found):
            raise VerificationError(
                f"certificate subject mismatch: expected a match of /{self.regex.pattern}/, found {found}"
            )


def claim(cert: x509.Certificate, name: str) -> str | None:
    """The value of Fulcio claim `name` (claims.py), None when the certificate lacks it.

    Raises VerificationError when the extension is not a DER UTF8String, as Fulcio writes them."""
    oid = CLAIMS[name]
    try:
        raw = cert.extensions.get_extension_for_oid(ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    try:
        return _der_utf8(raw.value)  # type: ignore[attr-defined]
    except (ValueError, UnicodeDecodeError):
        raise VerificationError(f"certificate claim {name} ({oid}) is malformed") from None


class ClaimPolicy:
    """Fulcio claim `name` equals `exact` and/or matches `regex` (searched, as cosign's flags)."""

    def __init__(self, name: str, *, exact: str | None = None, regex: str | None = None) -> None:
        if exact is None and regex is None:
            raise ValueError("ClaimPolicy needs exact or regex")
        self.name = name
        self.exact = exact
        self.regex = re.compile(regex) if regex is not None else None

    def verify(self, cert: x509.Certificate) -> None:
        found = claim(cert, self.name)
        where = f"certificate claim {self.name} ({CLAIMS[self.name]})"
        if found is None:
            raise VerificationError(f"{where} mismatch: the certificate has no such claim")
        if self.exact is not None and found != self.exact:
            raise VerificationError(f"{where} mismatch: expected {self.exact!r}, found {found!r}")
        if self.regex is not None and not _go_search(self.regex, found):
            raise VerificationError(
                f"{where} mismatch: expected a match of /{self.regex.pattern}/, found {found!r}"
            )


def claim_policies(rule: KeylessRule) -> list[ClaimPolicy]:
    """One policy per constrained claim, exact value and regex together, in the configured order."""
    wanted: dict[str, dict[str, str]] = {}
    for key, value in rule.claims.items():
        split = split_claim_key(key)
        if split is None:  # refused at load
            raise ValueError(f"unknown claim {key!r}")
        name, is_regex = split
        wanted.setdefault(name, {})["regex" if is_regex else "exact"] = value
    return [ClaimPolicy(name, **parts) for name, parts in wanted.items()]


def identity_policy(rule: KeylessRule) -> VerificationPolicy:
    """The rule's identity as one policy: issuer first, then subject, then CI claims."""
    children: list[VerificationPolicy] = []
    if rule.issuer or rule.issuer_regex:
        children.append(IssuerPolicy(exact=rule.issuer or None, regex=rule.issuer_regex or None))
    if rule.subject or rule.subject_regex:
        children.append(SubjectPolicy(exact=rule.subject or None, regex=rule.subject_regex or None))
    children.extend(claim_policies(rule))
    return AllOf(children)


def describe(cert: x509.Certificate) -> str:
    """`<subjects> (issuer <issuer>)`, for success messages."""
    try:
        iss = issuer(cert)
    except VerificationError:
        iss = None
    subs = subjects(cert)
    who = subs[0] if len(subs) == 1 else str(subs)
    return f"{who} (issuer {iss})" if iss else who
