"""Which endpoints serve a registry: containerd's hosts.toml layout plus the `registries` config.

containerd's rules, followed here so one certs.d directory serves both: `<dir>/<host>/hosts.toml`
(else `<dir>/_default/hosts.toml`); `[host."<url>"]` tables are mirrors tried in file order; `server`
(default `https://<host>`, Docker Hub's is `https://registry-1.docker.io`) comes last; an URL path gets
`/v2` appended unless `override_path = true`; `capabilities` default to pull, resolve, push; relative
`ca`/`client` paths are relative to the hosts.toml directory. Localhost and loopback registries default
to plain HTTP (containerd 1.6 does the same).
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from dataclasses import dataclass, field
from typing import Any

from imaged.errors import InvalidArgument
from imaged.registry.config import HostConfig, RegistriesConfig, shown_url, split_endpoint_url
from imaged.registry.reference import is_localhost, normalize_host, registry_host

ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})
MAX_HOSTS_TOML = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to send registry API requests for a given registry."""

    scheme: str
    host: str  # host[:port] as in the URL
    path: str  # API root, normally "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    mirror: bool = False
    skip_verify: bool = False
    ca_files: tuple[str, ...] = ()
    client_certs: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    # Set on mirrors: the registry the mirror stands in for, sent as `?ns=`.
    namespace: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def url(self, path: str) -> str:
        """API URL for `path` (`/<repo>/manifests/<ref>`), with `ns` on mirrors."""
        u = self.base_url + path
        if self.namespace:
            u += ("&" if "?" in u else "?") + f"ns={self.namespace}"
        return u

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}"


@dataclass(frozen=True, slots=True)
class HostsFile:
    """A parsed hosts.toml: mirror entries in order, then the server entry (if the file has one)."""

    mirrors: tuple[Endpoint, ...] = ()
    server: Endpoint | None = None
    path: str = ""


@dataclass
class _Common:
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    override_path: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _paths(v: Any, base: pathlib.Path, what: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        raise ValueError(f"{what} must be a path or a list of paths")
    return tuple(str(base / x) if not os.path.isabs(x) else x for x in items)


def _client(v: Any, base: pathlib.Path) -> tuple[tuple[str, str | None], ...]:
    def one(p: str) -> str:
        return str(base / p) if not os.path.isabs(p) else p

    if isinstance(v, str):
        return ((one(v), None),)
    if not isinstance(v, list):
        raise ValueError("client must be a path, a list of paths, or a list of [cert, key] pairs")
    out: list[tuple[str, str | None]] = []
    for item in v:
        if isinstance(item, str):
            out.append((one(item), None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x for x in item):
            out.append((one(item[0]), one(item[1])))
        else:
            raise ValueError("client entries must be a path or a [cert, key] pair")
    return tuple(out)


def _headers(v: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise ValueError("header must be a table of names to a string or a list of strings")
    out: list[tuple[str, str]] = []
    for name, value in v.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            raise ValueError(f"header {name!r} must be a string or a list of strings")
        if any(c in name or any(c in x for x in values) for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        out += [(name, x) for x in values]
    return tuple(out)


def _common(t: dict[str, Any], base: pathlib.Path) -> _Common:
    c = _Common()
    if "capabilities" in t:
        caps = t["capabilities"]
        if not isinstance(caps, list) or not all(isinstance(x, str) for x in caps):
            raise ValueError("capabilities must be a list of strings")
        unknown = set(caps) - ALL_CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)} (known: pull, resolve, push)")
        c.capabilities = frozenset(caps)
    if "skip_verify" in t:
        if not isinstance(t["skip_verify"], bool):
            raise ValueError("skip_verify must be true or false")
        c.skip_verify = t["skip_verify"]
    if "ca" in t:
        c.ca = _paths(t["ca"], base, "ca")
    if "client" in t:
        c.client = _client(t["client"], base)
    if "header" in t:
        c.headers = _headers(t["header"])
    if "override_path" in t:
        if not isinstance(t["override_path"], bool):
            raise ValueError("override_path must be true or false")
        c.override_path = t["override_path"]
    return c


def _endpoint(url: str, c: _Common, *, mirror: bool, namespace: str | None) -> Endpoint:
    scheme, host, path = split_endpoint_url(url)  # its errors never repeat the URL
    path = "/" + path.strip("/") if path.strip("/") else ""
    if not c.override_path and not path.endswith("/v2"):
        path += "/v2"
    return Endpoint(
        scheme=scheme,
        host=host,
        path=path,
        capabilities=c.capabilities,
        mirror=mirror,
        skip_verify=c.skip_verify,
        ca_files=c.ca,
        client_certs=c.client,
        headers=c.headers,
        namespace=namespace if mirror else None,
    )


def parse_hosts_toml(
    text: str, *, registry: str, base_dir: str | pathlib.Path = ".", source: str = ""
) -> HostsFile:
    """Parse a hosts.toml for `registry` (the host of image references, e.g. `docker.io`)."""
    where = source or "hosts.toml"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{where}: not valid TOML: {e}") from None
    base = pathlib.Path(base_dir)
    try:
        mirrors: list[Endpoint] = []
        hosts = doc.get("host", {})
        if not isinstance(hosts, dict):
            raise ValueError("[host] must be a table of endpoint URLs")
        for n, (url, table) in enumerate(hosts.items()):
            # A URL that is wrong may hold credentials: then it is named by its position only.
            named = f'[host."{url}"]' if shown_url(url) else f"[host] table {n + 1} (its URL not shown)"
            if not isinstance(table, dict):
                raise ValueError(f"{named} must be a table")
            try:
                mirrors.append(_endpoint(url, _common(table, base), mirror=True, namespace=registry))
            except ValueError as e:
                raise ValueError(f"{named}: {e}") from None
        server: Endpoint | None = None
        if "server" in doc:
            if not isinstance(doc["server"], str) or not doc["server"]:
                raise ValueError("server must be a URL string")
            try:
                server = _endpoint(doc["server"], _common(doc, base), mirror=False, namespace=None)
            except ValueError as e:
                raise ValueError(f"server {e}") from None
        elif any(
            k in doc for k in ("capabilities", "ca", "client", "skip_verify", "header", "override_path")
        ):
            default = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
            server = _endpoint(default, _common(doc, base), mirror=False, namespace=None)
    except ValueError as e:
        raise InvalidArgument(f"{where}: {e}") from None
    # A mirror whose host is the registry itself is not a mirror (no `ns`).
    mirrors = [
        Endpoint(**{**_fields(m), "mirror": False, "namespace": None})
        if m.host == registry_host(registry)
        else m
        for m in mirrors
    ]
    return HostsFile(tuple(mirrors), server, where)


def _fields(e: Endpoint) -> dict[str, Any]:
    return {name: getattr(e, name) for name in Endpoint.__slots__}


def load_hosts_dir(config_path: str, registry: str) -> HostsFile | None:
    """The hosts.toml that applies to `registry` under `config_path`, or None."""
    root = pathlib.Path(config_path)
    for name in (registry, registry.replace(":", "_"), "_default"):
        path = root / name / "hosts.toml"
        try:
            if path.stat().st_size > MAX_HOSTS_TOML:
                raise InvalidArgument(f"{path}: larger than {MAX_HOSTS_TOML} bytes")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{path}: cannot read: {e}") from None
        return parse_hosts_toml(text, registry=registry, base_dir=path.parent, source=str(path))
    return None


def plain_http(cfg: HostConfig | None, host: str) -> bool:
    """Whether `host` is talked to in plain HTTP when nothing names a scheme: its `plain_http`
    setting, else only localhost and loopback without a `tls` section (as containerd does)."""
    if cfg is not None and cfg.plain_http is not None:
        return cfg.plain_http
    return is_localhost(host) and (cfg is None or cfg.tls is None)


def _apply_host_config(e: Endpoint, cfg: HostConfig | None, *, explicit_scheme: bool) -> Endpoint:
    """Layer the `registries.hosts` settings of the endpoint's own host over it."""
    if cfg is None:
        return e
    f = _fields(e)
    if cfg.tls is not None:
        if cfg.tls.ca_file:
            f["ca_files"] = (*e.ca_files, cfg.tls.ca_file)
        if cfg.tls.cert_file:
            f["client_certs"] = (*e.client_certs, (cfg.tls.cert_file, cfg.tls.key_file))
        f["skip_verify"] = e.skip_verify or cfg.tls.insecure_skip_verify
        if not explicit_scheme:
            f["scheme"] = "https"
    if cfg.plain_http is not None and not explicit_scheme:
        f["scheme"] = "http" if cfg.plain_http else "https"
    return Endpoint(**f)


def endpoints(config: RegistriesConfig, domain: str) -> list[Endpoint]:
    """Endpoints for registry `domain` in the order to try them: mirrors first, the registry last."""
    domain = normalize_host(domain)
    api_host = registry_host(domain)
    hosts_file = load_hosts_dir(config.config_path, domain) if config.config_path else None
    host_cfg = config.host(domain)
    out: list[Endpoint] = []

    for m in host_cfg.mirrors if host_cfg else ():
        e = _endpoint(m, _Common(capabilities=frozenset({"pull", "resolve"})), mirror=True, namespace=domain)
        out.append(_apply_host_config(e, config.host(e.host), explicit_scheme=True))
    if hosts_file is not None:
        for e in hosts_file.mirrors:
            out.append(_apply_host_config(e, config.host(e.host), explicit_scheme=True))

    if hosts_file is not None and hosts_file.server is not None:
        server = hosts_file.server
        explicit = True
    else:
        server = Endpoint(
            scheme="http" if plain_http(host_cfg, api_host) else "https", host=api_host, path="/v2"
        )
        explicit = False
    out.append(_apply_host_config(server, host_cfg, explicit_scheme=explicit))
    # Same endpoint listed twice (e.g. in config and hosts.toml): keep the first.
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for e in out:
        key = (e.scheme, e.host, e.path)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    return unique
