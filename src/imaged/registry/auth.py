"""Registry authentication: WWW-Authenticate challenges, token fetches and a bounded token cache.

Secrets (passwords, tokens, Authorization headers) never appear in messages or logs: errors name the
registry, the realm host and the repository only; `redact_url` strips query strings, which carry
signatures on redirected blob URLs.
"""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_TOKEN_RESPONSE = 1024 * 1024
MIN_TOKEN_LIFETIME = 60  # seconds; what the distribution token spec says to assume
TOKEN_SAFETY_MARGIN = 10
MAX_CACHED_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a WWW-Authenticate header: scheme (lowercase) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] not in ' \t,="':
        j += 1
    return s[i:j], j


def _quoted(s: str, i: int) -> tuple[str, int]:
    """`s[i]` is the opening quote; returns (unescaped value, index after the closing quote)."""
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges (several may share one header): `Bearer realm="..",scope=".."`.

    Malformed input gives the challenges parsed before the problem (possibly none), never an exception:
    the header comes from the network.
    """
    s, n, i = header, len(header), 0
    out: list[Challenge] = []
    try:
        while True:
            i = _skip(s, i, " \t,")
            scheme, i = _token(s, i)
            if not scheme:
                break
            params: dict[str, str] = {}
            out.append(Challenge(scheme.lower(), params))
            first = True
            while True:
                save = i
                name, k = _token(s, _skip(s, i, " \t,"))
                if not name:
                    i = k
                    break
                m = _skip(s, k, " \t")
                if m < n and s[m] == "=":
                    v = _skip(s, m + 1, " \t")
                    if v < n and s[v] == '"':
                        value, i = _quoted(s, v)
                        params[name.lower()] = value
                    else:
                        value, i = _token(s, v)
                        if value:
                            params[name.lower()] = value
                        else:  # token68 padding ("abc==") or an empty value: nothing to keep
                            i = _skip(s, v, "=")
                    first = False
                    continue
                if first and (m >= n or s[m] == ","):
                    i, first = m, False  # token68 without padding
                    continue
                i = save  # `name` is the next challenge's scheme
                break
    except ValueError:
        pass
    return out


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def redact_url(url: str) -> str:
    """The URL without query string or userinfo: fit for messages."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = u.hostname or ""
    if u.port:
        host = f"{host}:{u.port}"
    if ":" in (u.hostname or ""):
        host = f"[{u.hostname}]" + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit((u.scheme, host, u.path, "", ""))


def repository_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to authenticate with at one host. `fingerprint` keys caches without holding the secret."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    # A bearer token for the registry itself (CRI's `AuthConfig.registry_token`): sent as is.
    registry_token: str | None = field(default=None, repr=False)
    # Computed once: it keys a cache lookup on every registry request (5% of a small-layer pull).
    fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        for part in (self.username, self.password, self.identity_token, self.registry_token):
            h.update(b"\x00" + (part or "").encode())
        object.__setattr__(self, "fingerprint", h.hexdigest()[:16])

    def basic(self) -> str | None:
        if self.username is not None and self.password is not None:
            return basic_header(self.username, self.password)
        return None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=<redacted>)"


ANONYMOUS = Credentials()


class HostAuth(NamedTuple):
    """Credentials of any kind for one registry host (a CRI pull's `AuthConfig`)."""

    host: str
    credentials: Credentials


class HostLogin(NamedTuple):
    """A user name and password for one registry host (a Verify request's `credentials`). A
    tuple, so that `(host, username, password)` is one too."""

    host: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"HostLogin(host={self.host!r}, username={self.username!r}, password=<redacted>)"


class TokenCache:
    """Bearer tokens per (endpoint host, scope, credentials), honouring `expires_in`; size-bounded."""

    def __init__(
        self, max_entries: int = MAX_CACHED_TOKENS, clock: Callable[[], float] | None = None
    ) -> None:
        self._entries: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()
        self._max = max_entries
        self._clock = clock or time.monotonic

    def get(self, host: str, scope: str, creds: Credentials) -> str | None:
        key = (host, scope, creds.fingerprint)
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, expires = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return token

    def put(self, host: str, scope: str, creds: Credentials, token: str, expires_in: float | None) -> None:
        lifetime = max(float(expires_in or 0), MIN_TOKEN_LIFETIME) - TOKEN_SAFETY_MARGIN
        self._entries[(host, scope, creds.fingerprint)] = (token, self._clock() + lifetime)
        self._entries.move_to_end((host, scope, creds.fingerprint))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, host: str, scope: str, creds: Credentials) -> None:
        self._entries.pop((host, scope, creds.fingerprint), None)

    def __len__(self) -> int:
        return len(self._entries)
