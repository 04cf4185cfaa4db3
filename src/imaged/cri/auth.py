"""A CRI pull's `AuthConfig`, read as containerd's CRI reads it, for imaged's registry client too.

The same credentials must serve the signature discovery and the pull: a kubelet's pull secret is
the only way into a private registry, and it arrives in the request. containerd's rules: the
credentials apply only to `server_address`'s host when it is set (without a scheme it means
https), and are taken from `username`/`password`, else `identity_token` (an OAuth2 refresh token),
else `auth` (base64 of `user:password`). containerd's CRI ignores `registry_token`; imaged sends
it as the bearer token it is.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from imaged import errors
from imaged.pb.runtime.v1 import api_pb2
from imaged.registry.auth import Credentials
from imaged.registry.config import RegistriesConfig
from imaged.registry.reference import normalize_host


def _server_host(address: str) -> str:
    url = address if "://" in address else f"https://{address}"
    try:
        return urllib.parse.urlsplit(url).netloc
    except ValueError:
        raise errors.InvalidArgument("auth.server_address is not a registry address") from None


def request_credentials(auth: api_pb2.AuthConfig, host: str) -> Credentials | None:
    """What `auth` gives for registry `host` (None: nothing, the configured credentials apply)."""
    if auth.server_address and normalize_host(_server_host(auth.server_address)) != normalize_host(host):
        return None
    if auth.username:
        return Credentials(auth.username, auth.password)
    if auth.identity_token:
        return Credentials(identity_token=auth.identity_token)
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise errors.InvalidArgument("auth.auth is not base64 of 'user:password'") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise errors.InvalidArgument("auth.auth is not base64 of 'user:password'")
        return Credentials(user, password.strip("\x00"))
    if auth.registry_token:
        return Credentials(registry_token=auth.registry_token)
    return None


def containerd_ignores(creds: Credentials | None) -> bool:
    """Whether containerd's CRI would pull without these credentials (a registry token alone)."""
    return creds is not None and creds.registry_token is not None


def configured_auth(config: RegistriesConfig, host: str) -> api_pb2.AuthConfig | None:
    """imaged's configured credentials for `host`, as a CRI `AuthConfig` for containerd."""
    cfg = config.host(host)
    if cfg is None or cfg.auth is None:
        return None
    basic = cfg.auth.basic()
    if basic is not None:
        return api_pb2.AuthConfig(username=basic[0], password=basic[1])
    if cfg.auth.identity_token is not None:
        return api_pb2.AuthConfig(identity_token=cfg.auth.identity_token.get_secret_value())
    return None
