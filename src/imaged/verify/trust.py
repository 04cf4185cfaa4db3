"""Trust roots: the Sigstore `trusted_root.json` every keyless check is anchored in.

Where a root comes from (embedded in sigstore-python, a configured file, TUF, the copy saved
by the last refresh) is decided in `trustroots.py`; this module only turns bytes into a root.

The file is loaded twice from the same bytes: into sigstore-python's `TrustedRoot`, which
verifies bundles, and into a small typed view of its CAs and log keys, which the legacy
(SET-only) path needs and sigstore-python does not expose publicly.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import logging
import pathlib
from dataclasses import dataclass
from datetime import datetime
from importlib.resources.abc import Traversable
from typing import Any

import pydantic
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sigstore.models import TrustedRoot
from sigstore.verify import Verifier

from imaged.oci import jsondoc
from imaged.verify.files import read_regular_file
from imaged.verify.keys import PublicKey, UnusableKey, check_key

log = logging.getLogger(__name__)

_EMBEDDED_DIR = "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
MAX_TRUST_ROOT_SIZE = 1024 * 1024
EMBEDDED_SOURCE = "embedded Sigstore public-good trusted root"


class TrustRootError(Exception):
    """A trust root that cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Validity:
    start: datetime | None
    end: datetime | None

    def contains(self, when: datetime) -> bool:
        return (self.start is None or self.start <= when) and (self.end is None or when <= self.end)

    def __str__(self) -> str:
        s = self.start.isoformat() if self.start else "-inf"
        e = self.end.isoformat() if self.end else "open"
        return f"{s}..{e}"


@dataclass(frozen=True, slots=True)
class LogKey:
    """A transparency log (Rekor) or CT log key, identified by sha256 of its SPKI (the log ID)."""

    log_id: bytes
    key: PublicKey
    validity: Validity
    url: str


@dataclass(frozen=True, slots=True)
class Authority:
    """A Fulcio CA entry: its chain (intermediates then root) and when it issued certificates."""

    certificates: tuple[x509.Certificate, ...]
    validity: Validity
    uri: str


@dataclass(frozen=True)
class TrustRoot:
    source: str  # for messages: "embedded ...", a path, "<url> (TUF)"
    fingerprint: str  # sha256 of the JSON: part of the verdict cache key
    sigstore: TrustedRoot
    authorities: tuple[Authority, ...]
    rekor_keys: dict[bytes, LogKey]
    ct_keys: dict[bytes, LogKey]

    @functools.cached_property
    def verifier(self) -> Verifier:
        """sigstore-python's bundle verifier for this root (built once)."""
        return Verifier(trusted_root=self.sigstore)

    def fulcio_certificates(self) -> list[x509.Certificate]:
        return [c for a in self.authorities for c in a.certificates]


def _time(v: Any, what: str) -> datetime | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise TrustRootError(f"{what}: time is not a string")
    try:
        return datetime.fromisoformat(v)
    except ValueError:
        raise TrustRootError(f"{what}: invalid time (not RFC 3339)") from None


MAX_PROBLEMS = 5


def _problems(e: Exception) -> str:
    """Why a document is no trusted root, by field location and reason only: these messages reach
    PolicyService.Test's caller and the log, and the file may be something else entirely (a
    credentials file), so no value from it is quoted (pydantic's text carries `input_value=`)."""
    if not isinstance(e, pydantic.ValidationError):
        return type(e).__name__  # library messages may quote what they could not parse
    out: list[str] = []
    for err in e.errors(include_url=False, include_context=False, include_input=False):
        loc = [str(part) for part in err["loc"]]
        if err["type"] == "extra_forbidden":  # the location is the file's own key: not shown
            reason, loc = "unknown key", loc[:-1]
        elif err["type"] in ("value_error", "assertion_error"):  # free text, may quote the value
            reason = "invalid value"
        else:
            reason = err["msg"]
        out.append(f"{'.'.join(loc) or '(top level)'}: {reason}")
    more = f"; and {len(out) - MAX_PROBLEMS} more" if len(out) > MAX_PROBLEMS else ""
    return "; ".join(out[:MAX_PROBLEMS]) + more


def _validity(v: Any, what: str) -> Validity:
    if v is None:
        return Validity(None, None)
    if not isinstance(v, dict):
        raise TrustRootError(f"{what}: validFor is not an object")
    return Validity(_time(v.get("start"), what), _time(v.get("end"), what))


def _b64(v: Any, what: str) -> bytes:
    if not isinstance(v, str):
        raise TrustRootError(f"{what}: missing base64 value")
    try:
        return base64.b64decode(v, validate=True)
    except ValueError:
        raise TrustRootError(f"{what}: invalid base64") from None


def _log_keys(entries: Any, what: str) -> dict[bytes, LogKey]:
    out: dict[bytes, LogKey] = {}
    if not isinstance(entries, list):
        return out
    for i, e in enumerate(entries):
        w = f"{what}[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("publicKey"), dict):
            raise TrustRootError(f"{w}: no publicKey")
        pk = e["publicKey"]
        raw = _b64(pk.get("rawBytes"), f"{w}.publicKey.rawBytes")
        try:
            key = check_key(load_der_public_key(raw))
        except (ValueError, UnusableKey) as err:
            # sigstore-python skips keys it cannot use too; a log we cannot check is not trusted.
            log.warning("trust root %s: ignoring unusable key: %s", w, err)
            continue
        entry = LogKey(
            hashlib.sha256(raw).digest(), key, _validity(pk.get("validFor"), w), str(e.get("baseUrl", ""))
        )
        out[entry.log_id] = entry
        # The declared ID is what entries name; for Rekor v1 and CT logs it equals the SPKI hash.
        declared = e.get("logId")
        if isinstance(declared, dict) and declared.get("keyId") is not None:
            out[_b64(declared["keyId"], f"{w}.logId.keyId")] = entry
    return out


def _authorities(entries: Any) -> tuple[Authority, ...]:
    out: list[Authority] = []
    if not isinstance(entries, list):
        return ()
    for i, e in enumerate(entries):
        w = f"certificateAuthorities[{i}]"
        chain = e.get("certChain", {}).get("certificates") if isinstance(e, dict) else None
        if not isinstance(chain, list) or not chain:
            raise TrustRootError(f"{w}: no certChain.certificates")
        certs = []
        for j, c in enumerate(chain):
            raw = _b64(c.get("rawBytes") if isinstance(c, dict) else None, f"{w}.certificates[{j}]")
            try:
                certs.append(x509.load_der_x509_certificate(raw))
            except ValueError as err:
                raise TrustRootError(f"{w}.certificates[{j}]: not a DER certificate: {err}") from None
        out.append(Authority(tuple(certs), _validity(e.get("validFor"), w), str(e.get("uri", ""))))
    return tuple(out)


def parse_trust_root(data: bytes, source: str) -> TrustRoot:
    """Build both views of a trusted_root.json; raise TrustRootError naming `source`."""
    if len(data) > MAX_TRUST_ROOT_SIZE:
        raise TrustRootError(f"{source}: larger than {MAX_TRUST_ROOT_SIZE} bytes")
    try:
        doc = jsondoc.loads(data)
    except UnicodeDecodeError as e:
        raise TrustRootError(f"{source}: not valid JSON: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TrustRootError(
            f"{source}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except ValueError as e:  # ours (nested too deeply)
        raise TrustRootError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise TrustRootError(f"{source}: not a JSON object")
    try:
        from sigstore_models.trustroot import v1 as trustroot_v1

        inner = trustroot_v1.TrustedRoot.from_json(data)
        sigstore_root = TrustedRoot(inner)
    except Exception as e:  # sigstore raises pydantic, ValueError and its own Error types
        raise TrustRootError(f"{source}: not a Sigstore trusted root: {_problems(e)}") from None
    try:
        authorities = _authorities(doc.get("certificateAuthorities"))
        rekor = _log_keys(doc.get("tlogs"), "tlogs")
        ct = _log_keys(doc.get("ctlogs"), "ctlogs")
    except TrustRootError as e:
        raise TrustRootError(f"{source}: {e}") from None
    if not authorities and not rekor:
        raise TrustRootError(f"{source}: no certificate authorities and no transparency logs")
    return TrustRoot(
        source=source,
        fingerprint="sha256:" + hashlib.sha256(data).hexdigest(),
        sigstore=sigstore_root,
        authorities=authorities,
        rekor_keys=rekor,
        ct_keys=ct,
    )


def load_trust_root_file(path: str | pathlib.Path) -> TrustRoot:
    p = pathlib.Path(path)
    try:
        data = read_regular_file(p, MAX_TRUST_ROOT_SIZE)
    except OSError as e:
        raise TrustRootError(f"cannot read {p}: {e.strerror}") from None
    return parse_trust_root(data, str(p))


def _embedded(name: str) -> Traversable:
    return importlib.resources.files("sigstore._store").joinpath(_EMBEDDED_DIR, name)


def embedded_public_good() -> TrustRoot:
    """The public-good root shipped inside sigstore-python (what it uses offline)."""
    return parse_trust_root(_embedded("trusted_root.json").read_bytes(), EMBEDDED_SOURCE)


def embedded_public_good_mtime() -> float | None:
    """When the embedded root was installed (its file's mtime): the best age it has."""
    try:
        return pathlib.Path(str(_embedded("trusted_root.json"))).stat().st_mtime
    except OSError:
        return None


def embedded_public_good_tuf_root() -> bytes:
    """The public-good TUF repository's initial root.json, as sigstore-python ships it."""
    return _embedded("root.json").read_bytes()
