"""The `registries` configuration section: per-host auth, TLS and mirrors, retries, timeouts, limits."""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from imaged.oci.mediatypes import MAX_MANIFEST_SIZE
from imaged.registry.reference import normalize_host
from imaged.section import Section

_HOST_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)


def split_endpoint_url(url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], path) of a mirror or server URL (`https://` unless written).

    Raises ValueError with a message that repeats nothing of the URL: a URL that is wrong may
    be wrong because it carries a user name and password, in any shape (no scheme, a `/` in the
    password, several `@`), and configuration errors are printed and logged.
    """
    if "@" in url:
        raise ValueError(
            "holds credentials (user:password@), which are not supported in an endpoint URL: "
            "give them in registries.hosts.<that host>.auth"
        )
    full = url if "://" in url else f"https://{url}"
    scheme, _, rest = full.partition("://")
    host, slash, path = rest.partition("/")
    if scheme not in ("http", "https"):
        raise ValueError("has a scheme other than http or https")
    if not host or not _HOST_RE.fullmatch(host):
        raise ValueError("has no valid host[:port] after its scheme")
    return scheme, host, slash + path


def is_host_key(key: str) -> bool:
    """Whether `key` is a registry host (`host[:port]`) as `registries.hosts` keys must be."""
    return "://" not in key and "/" not in key and _HOST_RE.fullmatch(key) is not None


def shown_url(url: str) -> str | None:
    """`url` if it is a well-formed endpoint URL (so that it holds no credentials), else None."""
    try:
        split_endpoint_url(url)
    except ValueError:
        return None
    return url


def _existing_file(v: str | None, what: str) -> str | None:
    if v is None:
        return None
    if not v:
        raise ValueError(f"{what} is empty")
    if not os.path.isfile(v):
        raise ValueError(f"{what} {v!r} does not exist or is not a file")
    if not os.access(v, os.R_OK):
        raise ValueError(f"{what} {v!r} is not readable")
    return v


class AuthConfig(Section):
    """Credentials for one registry host. Give exactly one of: `username`+`password`, `auth`, or
    `identity_token`. Never logged."""

    username: str | None = Field(default=None, description="User name for Basic auth or the token server.")
    password: SecretStr | None = Field(default=None, description="Password (or access token) for `username`.")
    auth: SecretStr | None = Field(
        default=None,
        description='Base64 of "username:password", as in a docker config.json `auth` field.',
    )
    identity_token: SecretStr | None = Field(
        default=None,
        description="OAuth2 refresh token (docker config.json `identitytoken`), exchanged at the token "
        "server for access tokens.",
    )

    @model_validator(mode="after")
    def _exclusive(self) -> Self:
        given = [
            name
            for name, present in (
                ("username/password", self.username is not None or self.password is not None),
                ("auth", self.auth is not None),
                ("identity_token", self.identity_token is not None),
            )
            if present
        ]
        if len(given) > 1:
            raise ValueError(
                f"give only one of username/password, auth, identity_token (got {', '.join(given)})"
            )
        if not given:
            raise ValueError("give username and password, auth, or identity_token")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if self.username is not None and (not self.username or ":" in self.username):
            raise ValueError("username must be non-empty and must not contain ':'")
        if self.auth is not None:
            self._decode_auth(self.auth.get_secret_value())
        return self

    @staticmethod
    def _decode_auth(value: str) -> tuple[str, str]:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("auth must be base64 of 'username:password'") from None
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise ValueError("auth must be base64 of 'username:password' (no ':' found after decoding)")
        return user, password

    def basic(self) -> tuple[str, str] | None:
        """(username, password) for Basic auth, if these credentials have that form."""
        if self.username is not None and self.password is not None:
            return self.username, self.password.get_secret_value()
        if self.auth is not None:
            return self._decode_auth(self.auth.get_secret_value())
        return None


class TLSConfig(Section):
    """TLS settings for one registry host (HTTPS is used when any of these is set)."""

    ca_file: str | None = Field(
        default=None,
        description="PEM file of extra CA certificates trusted for this host (added to the system ones).",
    )
    cert_file: str | None = Field(
        default=None, description="PEM client certificate (mutual TLS); needs key_file."
    )
    key_file: str | None = Field(default=None, description="PEM private key of cert_file.")
    insecure_skip_verify: bool = Field(
        default=False,
        description="Do not verify the server certificate. For tests only: anyone on the path can "
        "then impersonate the registry.",
    )

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str | None) -> str | None:
        return _existing_file(v, "ca_file")

    @field_validator("cert_file")
    @classmethod
    def _cert(cls, v: str | None) -> str | None:
        return _existing_file(v, "cert_file")

    @field_validator("key_file")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return _existing_file(v, "key_file")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class HostConfig(Section):
    """Settings of one registry host (the key is the host as in image references: `docker.io`,
    `ghcr.io`, `127.0.0.1:5000`). Also applies to a mirror whose host is this key."""

    auth: AuthConfig | None = Field(default=None, description="Credentials for this host.")
    tls: TLSConfig | None = Field(
        default=None, description="CA, client certificate and verification settings."
    )
    plain_http: bool | None = Field(
        default=None,
        description="Talk plain HTTP to this host. Unset: plain HTTP only for localhost and loopback "
        "addresses without a `tls` section (as containerd does), HTTPS otherwise. Also decides whether "
        "credentials may be sent to a token server on this host over plain HTTP.",
    )
    mirrors: list[str] = Field(
        default_factory=list,
        description="Mirror endpoints (`https://mirror.example:5000`, optionally with a path), tried in "
        "order before the host itself for pulls and resolves. Requests to them carry `?ns=<host>`.",
    )
    max_concurrent_requests: int | None = Field(
        default=None, ge=1, le=256, description="Overrides `max_concurrent_requests_per_host` for this host."
    )

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, v: list[str]) -> list[str]:
        out = []
        for i, m in enumerate(v):
            try:
                split_endpoint_url(m)
            except ValueError as e:  # named by its position: the URL may hold a secret
                raise ValueError(f"mirrors[{i}] {e}") from None
            url = m if "://" in m else f"https://{m}"
            out.append(url.rstrip("/"))
        return out


class RetryConfig(Section):
    """Retries of registry requests on connection errors, timeouts, 408, 429 and 5xx answers."""

    attempts: int = Field(default=4, ge=1, le=20, description="Tries per request, the first one included.")
    base_delay: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds before the first retry; doubled each time (with jitter).",
    )
    max_delay: float = Field(
        default=10.0, gt=0, le=600, description="Upper bound of one retry delay, seconds."
    )


class TimeoutConfig(Section):
    """Network timeouts, seconds. Blob downloads have no total timeout (a large blob may take long):
    they are bounded by `read`. Everything else (manifests, tokens, signatures, tag lists) is also
    bounded in total by `request`, so that a server trickling bytes cannot hold a call forever."""

    connect: float = Field(default=15.0, gt=0, le=600, description="TCP connect plus TLS handshake.")
    read: float = Field(
        default=60.0, gt=0, le=3600, description="Longest wait for more bytes from a response (idle time)."
    )
    request: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="Longest one manifest, token, signature or tag-list request may take in total "
        "(each retry gets its own), and the longest wait for a blob download's headers.",
    )


class RegistriesConfig(Section):
    """How the daemon talks to image registries."""

    config_path: str | None = Field(
        default=None,
        description="Directory in containerd's hosts.toml layout (`<dir>/<host>/hosts.toml`, "
        "`<dir>/_default/hosts.toml`) for mirrors and per-endpoint TLS, e.g. /etc/containerd/certs.d.",
    )
    hosts: dict[str, HostConfig] = Field(
        default_factory=dict,
        description="Per-registry settings keyed by host (`docker.io`, `127.0.0.1:5000`).",
    )
    retries: RetryConfig = Field(default_factory=RetryConfig, description="Retry policy.")
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig, description="Network timeouts.")
    max_manifest_size: int = Field(
        default=MAX_MANIFEST_SIZE,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest manifest or index accepted from a registry, bytes.",
    )
    max_blob_size: int | None = Field(
        default=None, ge=1, description="Largest layer or config blob accepted, bytes; unset: no limit."
    )
    max_concurrent_requests_per_host: int = Field(
        default=8, ge=1, le=256, description="Requests in flight to one registry endpoint at a time."
    )

    @field_validator("config_path")
    @classmethod
    def _config_path(cls, v: str | None) -> str | None:
        if v is not None and not os.path.isdir(v):
            raise ValueError(f"config_path {v!r} is not a directory")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: dict[str, HostConfig]) -> dict[str, HostConfig]:
        out: dict[str, HostConfig] = {}
        for key, cfg in v.items():
            if not is_host_key(key):
                shown = "(not shown: it holds an '@')" if "@" in key else repr(key)  # user:password@
                raise ValueError(
                    f"hosts key {shown} must be a registry host like 'docker.io' or '127.0.0.1:5000'"
                )
            norm = normalize_host(key)
            if norm in out:
                raise ValueError(f"hosts key {key!r} names the same registry as another key ({norm})")
            out[norm] = cfg
        return out

    def host(self, host: str) -> HostConfig | None:
        """The settings for `host` (Docker Hub aliases folded into `docker.io`)."""
        return self.hosts.get(normalize_host(host))
