"""Docker-compatible image references: parse, validate and normalize.

Follows the grammar of distribution/reference (the one docker, containerd and CRI use), so that
`nginx`, `docker.io/library/nginx:latest` and `index.docker.io/library/nginx` are one image.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from imaged.errors import InvalidArgument
from imaged.oci.digest import SHA256_RE, validate_digest

DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DEFAULT_TAG = "latest"
MAX_NAME = 255
# No valid reference comes near this (name 255 + tag 128 + sha512 digest 135 characters): anything
# longer is refused before it is parsed, echoed or logged.
MAX_REFERENCE = 1024

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)  # \w as in Go: [A-Za-z0-9_]


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized reference: domain is never empty and Docker Hub names carry `library/`."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """`domain/path`, the name rules and records are keyed by."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, digest)

    def pinned(self, digest: str | None = None) -> str:
        """`repository@digest` (the form Pull returns and CRI records as a repo digest)."""
        d = digest or self.digest
        if not d:
            raise ValueError("reference has no digest")
        return f"{self.repository}@{d}"

    def tagged(self) -> str | None:
        return f"{self.repository}:{self.tag}" if self.tag else None

    def __str__(self) -> str:
        s = self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def familiar(self) -> str:
        """Short form for people (`nginx:1.27`)."""
        s = self.path.removeprefix("library/") if self.domain == DOCKER_HUB else self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def is_localhost(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port."""
    h = host
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_port(host: str) -> tuple[str, str | None]:
    """`host[:port]` -> (host, port digits or None); a bracketed IPv6 address keeps its brackets."""
    if host.startswith("["):
        end = host.find("]")
        if end >= 0 and host[end + 1 : end + 2] == ":":
            return host[: end + 1], host[end + 2 :]
        return host, None
    name, sep, port = host.rpartition(":")
    if sep and name and ":" not in name:
        return name, port
    return host, None


def canonical_domain(host: str, plain_http: Callable[[str], bool] | None = None) -> str:
    """One spelling per registry, for the policy: a rule must see the server that is contacted.

    Host names are case-insensitive, Docker Hub answers to several names, a port may be written
    with leading zeros (`:05000` is `:5000`), and the scheme's own port may be written or not:
    `:443` for HTTPS, `:80` for a host talked to in plain HTTP (`plain_http(host)`, by default
    localhost and loopback, as the registry client decides). Without this, `INDEX.DOCKER.IO/...`,
    `ghcr.io:0443/org/app` or `127.0.0.1:05000/demo/app` escaped rules written for `docker.io/*`,
    `ghcr.io/org/*` or `127.0.0.1:5000/demo/*` while fetching from the very same registry.
    References keep their host as written otherwise (records, and the address contacted).
    """
    is_plain = plain_http or is_localhost
    h = normalize_host(host)
    name, port = split_port(h)
    if port is not None and port.isdigit():
        plain = is_plain(h)
        if int(port) == (80 if plain else 443) and is_plain(name) == plain:
            h = name
    return normalize_host(h)


def canonical_repository(repository: str, plain_http: Callable[[str], bool] | None = None) -> str:
    """`domain/path` with the domain in its canonical spelling (Docker Hub paths with `library/`)."""
    domain, _, path = repository.partition("/")
    domain = canonical_domain(domain, plain_http)
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return f"{domain}/{path}"


def normalize_host(host: str) -> str:
    """Docker Hub's several names are one registry, `docker.io`; other hosts are lowercased, and a
    port loses its leading zeros. (The port stays: it is part of the address contacted, and of
    containerd's certs.d names.)"""
    h = host.strip().lower()
    name, port = split_port(h)
    if port and port.isdigit() and port[0] == "0":
        h = f"{name}:{int(port)}"
    return DOCKER_HUB if h in HUB_ALIASES else h


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, name
    if normalize_host(domain) == DOCKER_HUB:
        domain = DOCKER_HUB  # whatever its case: Docker Hub, with its `library/` rule below
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def parse(ref: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize `ref`; raise InvalidArgument naming the problem.

    With `default_tag`, a reference with neither tag nor digest gets `latest` (pull semantics).
    Results are cached (references are immutable and Verify parses the same ones again and again).
    """
    if not isinstance(ref, str):
        raise InvalidArgument("image reference is empty")
    if len(ref) > MAX_REFERENCE:
        raise InvalidArgument(f"invalid image reference: longer than {MAX_REFERENCE} characters")
    return _parse_cached(ref, default_tag)


@functools.lru_cache(maxsize=4096)
def _parse_cached(ref: str, default_tag: bool) -> Reference:
    return _parse(ref, default_tag=default_tag)


def _parse(ref: str, *, default_tag: bool = True) -> Reference:
    if not ref:  # (`parse` checked the type and the length)
        raise InvalidArgument("image reference is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidArgument(f"invalid image reference {ref!r}: contains white space")
    if SHA256_RE.fullmatch(ref) or re.fullmatch(r"[a-f0-9]{64}", ref):
        raise InvalidArgument(f"invalid image reference {ref!r}: an image id is not a repository name")
    remainder, _, digest = ref.partition("@")
    digest_value: str | None = None
    if digest:
        try:
            digest_value = validate_digest(digest)
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid image reference {ref!r}: {e.message}") from e
    elif ref.endswith("@"):
        raise InvalidArgument(f"invalid image reference {ref!r}: empty digest after '@'")
    name, tag = remainder, None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(f"invalid image reference {ref!r}: bad tag {tag!r}")
    if not name:
        raise InvalidArgument(f"invalid image reference {ref!r}: no repository name")
    if name.startswith("sha256:") or re.fullmatch(r"[a-f0-9]{64}", name):
        raise InvalidArgument(f"invalid image reference {ref!r}: an image id is not a repository name")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidArgument(f"invalid image reference {ref!r}: bad registry host {domain!r}")
    port = split_port(domain)[1]
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidArgument(
            f"invalid image reference {ref!r}: the port of registry host {domain!r} is out of range (1-65535)"
        )
    if not _PATH_RE.fullmatch(path):
        if path.lower() != path:
            raise InvalidArgument(f"invalid image reference {ref!r}: repository name must be lowercase")
        raise InvalidArgument(f"invalid image reference {ref!r}: bad repository path {path!r}")
    if len(f"{domain}/{path}") > MAX_NAME:
        raise InvalidArgument(f"invalid image reference {ref!r}: name longer than {MAX_NAME} characters")
    if default_tag and tag is None and digest_value is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest_value)


def registry_host(domain: str) -> str:
    """The host that serves the registry API for `domain` (Docker Hub's differs from its name)."""
    return "registry-1.docker.io" if domain == DOCKER_HUB else domain
