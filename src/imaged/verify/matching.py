"""Rule patterns: normalization and glob matching against normalized repository names.

A rule's `image` is a glob whose only metacharacter is `*`, matching any run of characters,
`/` included (the reference implementation's semantics). It is matched against the repository
of the image reference after normalization (`nginx:1.27` -> `docker.io/library/nginx`), never
against a tag or digest.

Patterns are normalized the way references are, so that a person's expectation holds:
- a Docker Hub alias host (`index.docker.io/`, `registry-1.docker.io/`,
  `registry.hub.docker.com/`) becomes `docker.io/`: `index.docker.io/*` and `docker.io/*`
  both match every Docker Hub image (the reference's `docker.io/*` silently missed them);
- a pattern without a registry host (no `/`, or a first component with no `.` or `:` that
  is not `localhost`) is a Docker Hub name: `nginx` -> `docker.io/library/nginx`,
  `nginx*` -> `docker.io/library/nginx*`, `myorg/*` -> `docker.io/myorg/*`; one-component
  Docker Hub names gain `library/` (`docker.io/nginx` -> `docker.io/library/nginx`, and
  `docker.io/nginx*` as `nginx*`);
- `*` alone, and a pattern whose first of several components holds a `*` (`*/app`,
  `*.example.com/*`), is used as is, against the full normalized name.
Registry hosts are compared in the form references get (`reference.canonical_domain`: lowercased,
Hub aliases as `docker.io`, no `:443` except on loopback); paths exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imaged.registry.reference import DOCKER_HUB, canonical_domain

_ALLOWED = re.compile(r"^[A-Za-z0-9._\-/:\[\]*]+$")


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a rule pattern, or None."""
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
    return None


def normalize_pattern(pattern: str) -> str:
    """The pattern as it is matched (see the module docstring)."""
    if set(pattern) == {"*"}:
        return pattern
    first, sep, rest = pattern.partition("/")
    if not sep:  # one component: an official Docker Hub image (`nginx`, `nginx*`)
        return f"{DOCKER_HUB}/library/{pattern}"
    if "*" in first:
        return f"{first.lower()}/{rest}"
    if any(c in first for c in ".:[") or first == "localhost" or first != first.lower():
        domain, path = canonical_domain(first), rest
    else:
        domain, path = DOCKER_HUB, pattern
    if domain == DOCKER_HUB and "/" not in path and not path.startswith("*"):
        path = f"library/{path}"  # `docker.io/nginx*` as `nginx*`: official images
    return f"{domain}/{path}"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern), re.S)


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled rule pattern."""

    pattern: str  # as written in the configuration
    normalized: str
    _regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        normalized = normalize_pattern(pattern)
        return cls(pattern, normalized, _glob_regex(normalized))

    def matches(self, repository: str) -> bool:
        """`repository` is normalized (`Reference.repository`); its host is compared in its
        canonical spelling, as the pattern's is."""
        domain, sep, path = repository.partition("/")
        return self._regex.fullmatch(f"{canonical_domain(domain)}{sep}{path}") is not None

    def covers(self, other: Glob) -> bool:
        """True if every name `other` matches is also matched by this glob (for shadow warnings).

        `other`'s stars become a character no literal of ours matches, so only our stars can
        absorb them: a match then holds for every expansion of `other`.
        """
        return self._regex.fullmatch(other.normalized.replace("*", "\x00")) is not None
