"""HTTP proxies from the environment, read the way containerd (Go's net/http) reads them.

`HTTPS_PROXY`/`https_proxy` for https URLs, `HTTP_PROXY`/`http_proxy` for http ones, and
`NO_PROXY`/`no_proxy` for exceptions: `*`, host names (which also cover their subdomains; a
leading dot is allowed), IP addresses and CIDR ranges, each optionally with `:port`. Like Go,
requests to `localhost` and to loopback addresses never go through a proxy. A node's proxy is
set in the service's environment (systemd `Environment=`), as it is for containerd.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Proxy:
    """Where to send a request, with the proxy's credentials apart (never logged)."""

    url: URL
    # Proxy-Authorization from the URL's user info, sent to the proxy only.
    headers: dict[str, str]

    def __str__(self) -> str:
        return str(self.url)


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name.upper()) or env.get(name.lower()) or ""


def _proxy(value: str, variable: str) -> Proxy | None:
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value  # Go accepts a bare host:port
    try:
        url = URL(value)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        # Requests then go direct and fail (or not) on their own; the log says why.
        log.warning("%s ignored: not an http(s) proxy URL", variable)
        return None
    headers = {}
    if url.user:
        token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
        headers["Proxy-Authorization"] = f"Basic {token}"
    return Proxy(url.with_user(None).with_path(""), headers)


@dataclass(frozen=True, slots=True)
class _Exception:
    host: str = ""  # a name: matches itself and its subdomains
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip in self.network
        return host == self.host or host.endswith("." + self.host)


def _exception(entry: str) -> _Exception:
    entry = entry.strip().lower()
    host, port = entry, None
    if entry.startswith("["):  # [v6]:port
        close = entry.find("]")
        host, rest = entry[1:close], entry[close + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif entry.count(":") == 1:
        name, _, p = entry.partition(":")
        if p.isdigit():
            host, port = name, int(p)
    try:
        return _Exception(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        return _Exception(host=host.removeprefix("*").lstrip("."), port=port)


@dataclass(frozen=True, slots=True)
class ProxyRules:
    http: Proxy | None = None
    https: Proxy | None = None
    everything_direct: bool = False
    exceptions: tuple[_Exception, ...] = field(default_factory=tuple)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> ProxyRules:
        env = os.environ if env is None else env
        entries = [e for e in _env(env, "no_proxy").split(",") if e.strip()]
        return cls(
            http=_proxy(_env(env, "http_proxy"), "HTTP_PROXY"),
            https=_proxy(_env(env, "https_proxy"), "HTTPS_PROXY"),
            everything_direct="*" in (e.strip() for e in entries),
            exceptions=tuple(_exception(e) for e in entries if e.strip() != "*"),
        )

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for `url`, or None to connect directly."""
        parts = urllib.parse.urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http if parts.scheme == "http" else None
        if proxy is None or self.everything_direct:
            return None
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if host == "localhost" or (ip is not None and ip.is_loopback):
            return None
        if any(e.matches(host, ip, port) for e in self.exceptions):
            return None
        return proxy
