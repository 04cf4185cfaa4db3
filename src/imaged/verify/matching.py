"""Rule patterns: normalization and glob matching against normalized repository names.

A rule's `image` is a glob whose only metacharacter is `*`. It is matched against the repository
of the image reference after normalization (`nginx:1.27` -> `docker.io/library/nginx`), never
against a tag or digest. A pattern is a registry host, `/`, then a repository path:
- in the path, `*` matches any run of characters, `/` included (the reference's semantics):
  `ghcr.io/org/*` covers `ghcr.io/org/team/app`;
- in the host, `*` matches within the host only, never a `/`: `*.corp.example/*` covers
  `mirror.corp.example/app` but not `evil.io/x/mirror.corp.example/app`. The reference reads the
  whole pattern as one glob, so there a skip rule for `*.corp.example/*` also skipped any
  repository whose *path* holds `.corp.example/`, on any registry: whoever can push a nested
  repository escaped the policy. A `*` in the host name does not reach into a port either:
  `*.corp.example` covers `a.corp.example` (HTTPS's port 443 implied), not `a.corp.example:8443`;
  a port is matched as written (`:5000`, `:50*`), and a port of `*` alone matches any port or
  none. The port is read as a reference's is: no leading zeros, `:443` is no port.
- `*` alone (or only stars) matches every image.

Patterns are normalized the way references are, so that a person's expectation holds:
- a Docker Hub alias host (`index.docker.io/`, `registry-1.docker.io/`,
  `registry.hub.docker.com/`) becomes `docker.io/`: `index.docker.io/*` and `docker.io/*`
  both match every Docker Hub image (the reference's `docker.io/*` silently missed them);
- a pattern whose first component is no registry host (no `.`, `:` or `*`, not `localhost`) is
  a Docker Hub name: `nginx` -> `docker.io/library/nginx`, `nginx*` -> `docker.io/library/nginx*`,
  `myorg/*` -> `docker.io/myorg/*`; one-component Docker Hub names gain `library/`
  (`docker.io/nginx` -> `docker.io/library/nginx`, and `docker.io/nginx*` as `nginx*`).
Registry hosts are compared in one spelling (`reference.canonical_domain`: lowercased, Hub
aliases as `docker.io`, no leading zeros in the port, no port the scheme implies); paths exactly.
A wildcard host's fixed parts are canonicalized the same way where they can be (its port; a
name without `*`). Patterns that can never match (an upper-case path, a bare host read as a Docker
Hub name, a wildcard host only Docker's own host names could match, which rules see as
`docker.io`, a port no reference has) are refused at load (`pattern_problem`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from imaged.registry.reference import (
    DOCKER_HUB,
    HUB_ALIASES,
    canonical_domain,
    canonical_repository,
    normalize_host,
    split_port,
)

_ALLOWED = re.compile(r"^[A-Za-z0-9._\-/:\[\]*]+$")
# Docker's own domains: the registry names under them are Docker Hub's aliases, seen as docker.io.
_DOCKER_DOMAINS = ("docker.io", "docker.com")
HTTPS_PORT = 443


PlainHttp = Callable[[str], bool]


def _is_host(component: str) -> bool:
    """Whether a pattern's first component is a registry host (docker's rule, plus globs)."""
    return any(c in component for c in ".:[*") or component == "localhost" or component != component.lower()


def _all_stars(pattern: str) -> bool:
    return bool(pattern) and set(pattern) == {"*"}


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a rule pattern (or can never match an image), or None."""
    if not pattern:
        return "image pattern is required"
    if "@" in pattern:
        return f"image pattern {pattern!r} names a digest; patterns match the repository only"
    if not _ALLOWED.match(pattern):
        return f"image pattern {pattern!r} has characters no repository name contains"
    last = pattern.rsplit("/", 1)[-1]
    if "/" in pattern and ":" in last:
        return f"image pattern {pattern!r} names a tag; patterns match the repository only"
    if "//" in pattern or pattern.startswith("/") or pattern.endswith("/"):
        return f"image pattern {pattern!r} has an empty path component"
    if _all_stars(pattern):
        return None
    if "/" not in pattern and (any(c in pattern for c in ".:[") or pattern.lower() == "localhost"):
        return (
            f"image pattern {pattern!r} has no '/', so it names the Docker Hub repository "
            f"docker.io/library/{pattern}, which cannot exist; for the images of registry "
            f"{pattern}, write '{pattern}/*'"
        )
    first = pattern.partition("/")[0]
    if "/" in pattern and "*" in first and (problem := _wildcard_host_problem(pattern, first)):
        return problem
    path = normalize_pattern(pattern).partition("/")[2]
    if path != path.lower():
        first, sep, rest = pattern.partition("/")
        fixed = f"{first}/{rest.lower()}" if sep and _is_host(first) else pattern.lower()
        return (
            f"image pattern {pattern!r} has upper-case letters in its repository path ({path}); "
            f"repository names are lower-case, so it can never match: write {fixed!r}"
        )
    return None


def _wildcard_host_problem(pattern: str, host: str) -> str | None:
    """Why a host with a `*` can never match a canonical reference host, or None."""
    name, port = split_port(host.lower())
    if port is not None and port != "*":
        digits = port.replace("*", "")
        if digits and not digits.isdigit():
            return f"image pattern {pattern!r} has a port {port!r} that is not a number"
        if port.startswith("0") and "*" in port:
            return (
                f"image pattern {pattern!r} has a port starting with a leading zero ({port!r}); "
                "ports are compared without leading zeros, so it can never match"
            )
        if "*" not in port and not 1 <= int(port) <= 65535:
            return f"image pattern {pattern!r} has a port {port!r} outside 1-65535"
    if "*" in name and name.rpartition("*")[2].endswith(_DOCKER_DOMAINS):
        host_re = re.compile(_host_regex(_wildcard_host(host)))
        if any(host_re.fullmatch(alias) for alias in HUB_ALIASES) and not host_re.fullmatch(DOCKER_HUB):
            path = normalize_pattern(f"{DOCKER_HUB}/{pattern.partition('/')[2]}")
            return (
                f"image pattern {pattern!r} matches only Docker's host names, and rules see Docker "
                f"Hub's ({', '.join(sorted(HUB_ALIASES))}) as docker.io, so it can never match: "
                f"for Docker Hub, write {path!r}"
            )
    return None


def _wildcard_host(host: str) -> str:
    """A host holding a `*`, canonicalized where it has fixed parts: lowercased, a name without
    `*` as `canonical_domain` spells it (Docker Hub's aliases), a port without leading zeros and
    without HTTPS's 443 (checked by `pattern_problem`)."""
    name, port = split_port(host.lower())
    if "*" not in name:
        name = normalize_host(name)
    if port is None or "*" in port or not port.isdigit():
        return name if port is None else f"{name}:{port}"
    number = int(port)
    return name if number == HTTPS_PORT else f"{name}:{number}"


def normalize_pattern(pattern: str, plain_http: PlainHttp | None = None) -> str:
    """The pattern as it is matched (see the module docstring)."""
    if _all_stars(pattern):
        return pattern
    first, sep, rest = pattern.partition("/")
    if not sep:  # one component: an official Docker Hub image (`nginx`, `nginx*`)
        return f"{DOCKER_HUB}/library/{pattern}"
    if "*" in first:
        return f"{_wildcard_host(first)}/{rest}"
    if _is_host(first):
        domain, path = canonical_domain(first, plain_http), rest
    else:
        domain, path = DOCKER_HUB, pattern
    if domain == DOCKER_HUB and "/" not in path and not path.startswith("*"):
        path = f"library/{path}"  # `docker.io/nginx*` as `nginx*`: official images
    return f"{domain}/{path}"


def _host_regex(host: str) -> str:
    """In the host name a `*` spans neither `/` nor `:` (a name's wildcard is no port's); in the
    port it spans digits, and a port of `*` alone is any port or none. A host of `*` alone is any
    host, port included: `*/*` means every registry, as people write it."""
    if host == "*":
        return "[^/]+"
    name, port = split_port(host)
    name_re = "".join("[^/:]*" if c == "*" else re.escape(c) for c in name)
    if port is None:
        return name_re
    if port == "*":
        return f"{name_re}(?::[^/:]*)?"
    return name_re + ":" + "".join("[^/:]*" if c == "*" else re.escape(c) for c in port)


def _glob_regex(normalized: str) -> re.Pattern[str]:
    """A `*` spans anything in the path, and never a `/` in the host."""
    if _all_stars(normalized):
        return re.compile(".*", re.S)
    host, _, path = normalized.partition("/")
    path_re = "".join(".*" if c == "*" else re.escape(c) for c in path)
    return re.compile(f"{_host_regex(host)}/{path_re}", re.S)


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled rule pattern. `plain_http` tells which hosts are spoken to in plain HTTP (their
    `:80` is implied, not `:443`); by default localhost and loopback."""

    pattern: str  # as written in the configuration
    normalized: str
    _regex: re.Pattern[str]
    plain_http: PlainHttp | None = field(default=None, compare=False)

    @classmethod
    def compile(cls, pattern: str, plain_http: PlainHttp | None = None) -> Glob:
        normalized = normalize_pattern(pattern, plain_http)
        return cls(pattern, normalized, _glob_regex(normalized), plain_http)

    def matches(self, repository: str) -> bool:
        """`repository` is normalized (`Reference.repository`); its host is compared in its
        canonical spelling, as the pattern's is."""
        return self.matches_canonical(canonical_repository(repository, self.plain_http))

    def matches_canonical(self, repository: str) -> bool:
        """`repository` already in `canonical_repository` form (computed once for all rules)."""
        return self._regex.fullmatch(repository) is not None

    def with_any_port(self) -> str | None:
        """For a wildcard host that names no port (so `a.example.com:8443` escapes it): the
        pattern that also covers any port; else None."""
        if _all_stars(self.normalized):
            return None
        host, _, path = self.normalized.partition("/")
        name, port = split_port(host)
        return f"{name}:*/{path}" if "*" in name and name != "*" and port is None else None

    def covers(self, other: Glob) -> bool:
        """True if every name `other` matches is also matched by this glob (for shadow warnings).

        `other`'s stars become a character no literal of ours matches, so only our stars can
        absorb them: a match then holds for every expansion of `other`.
        """
        return self._regex.fullmatch(other.normalized.replace("*", "\x00")) is not None
