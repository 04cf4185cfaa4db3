"""The token flow: a registry's Bearer challenge names a realm, which is asked for a token.

The realm is checked before anything is sent to it (no user information, no credentials over
plain HTTP to another machine), asked with a refresh token (OAuth2) or Basic credentials, and its
answer read within bounds. Messages name the realm's host and the registry, never a secret.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import urllib.parse
from typing import Any

import aiohttp
from yarl import URL

from imaged.errors import FailedPrecondition, Unauthenticated, Unavailable
from imaged.oci import jsondoc
from imaged.registry.auth import Challenge, Credentials, redact_url
from imaged.registry.config import RegistriesConfig
from imaged.registry.hosts import Endpoint, plain_http
from imaged.registry.http import MAX_ERROR_BODY, TooLarge, proxy_args, read_capped, shown
from imaged.registry.proxy import ProxyRules
from imaged.registry.reference import Reference

MAX_TOKEN_BODY = 1024 * 1024


async def fetch_token(
    session: aiohttp.ClientSession,
    proxies: ProxyRules,
    e: Endpoint,
    challenge: Challenge,
    scope: str,
    creds: Credentials,
    *,
    ref: Reference,
    config: RegistriesConfig,
    tls: ssl.SSLContext | bool,
    limit: asyncio.Timeout | None,
) -> tuple[str, float | None]:
    """A token for `scope` at endpoint `e` and its lifetime (None: the default), from the realm
    of `challenge`. `tls` is the endpoint's (a realm over HTTPS is trusted as its registry is);
    `limit`, the time limit of the request waiting for the token, is extended by the fetch's own."""
    realm = _checked_realm(challenge.realm, e, creds, ref, config)
    realm_host = realm.netloc
    timeout = config.timeouts.request
    try:
        request = _request(
            session, proxies, challenge, scope, creds, tls if realm.scheme == "https" else True
        )
        if limit is not None and (when := limit.when()) is not None:
            limit.reschedule(when + timeout)
        async with asyncio.timeout(timeout), request as resp:
            body = await _answer(resp, realm_host, e, creds, ref)
    except aiohttp.ClientError as err:
        raise Unavailable(
            f"cannot reach token server {realm_host} of {e.host}: {type(err).__name__}"
        ) from None
    except TimeoutError:
        raise Unavailable(f"token server {realm_host} of {e.host} timed out") from None
    except TooLarge:
        raise Unavailable(f"token server {realm_host} of {e.host} sent an oversized answer") from None
    return _token(body, realm_host, e)


def _checked_realm(
    realm: str, e: Endpoint, creds: Credentials, ref: Reference, config: RegistriesConfig
) -> urllib.parse.SplitResult:
    """The realm's URL, refused when unusable or when it would take credentials over plain HTTP."""
    try:
        parts: urllib.parse.SplitResult | None = urllib.parse.urlsplit(realm)
        URL(realm, encoded=True).port  # noqa: B018  (a malformed host or port raises here)
    except ValueError:
        parts = None
    # User information in a realm is refused: it would hide the host it names from the checks
    # below (`http://localhost:1@elsewhere/`) and be sent as credentials of its own.
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise Unauthenticated(f"{e.host} named an unusable token realm {redact_url(realm)!r}")
    realm_host = parts.netloc
    # The registry's machine (another port, as docker_auth runs beside a registry): plain HTTP
    # to it is what talking plain HTTP to the registry already accepts.
    same_machine = parts.hostname == urllib.parse.urlsplit(f"//{e.host}").hostname
    if (
        parts.scheme == "http"
        and (creds.identity_token is not None or creds.basic() is not None)
        and not plain_http(config.host(realm_host), realm_host)
        and not (e.scheme == "http" and same_machine)
    ):
        # containerd would send them; over the network they would be readable by anyone on the path.
        advice = (
            "serve the token realm over HTTPS"
            if realm_host.lower() == e.host.lower()  # plain_http there would downgrade the registry
            else f"serve the token realm over HTTPS, or accept plain HTTP to that host with "
            f"registries.hosts.{realm_host}.plain_http: true"
        )
        raise FailedPrecondition(
            f"{e.host} sends clients to token server {realm_host} over plain HTTP, and the "
            f"credentials configured for {ref.domain} are not sent unencrypted; {advice}"
        )
    return parts


def _request(
    session: aiohttp.ClientSession,
    proxies: ProxyRules,
    challenge: Challenge,
    scope: str,
    creds: Credentials,
    tls: ssl.SSLContext | bool,
) -> Any:
    """The token request (not sent yet): OAuth2's refresh-token grant with an identity token,
    else a GET with Basic credentials, if any. The registry's TLS settings (private CA, client
    certificate) serve its token server too, as containerd's resolver does: Harbor and GitLab put
    the realm under the same CA."""
    realm = challenge.realm
    scopes = [scope]
    for s in challenge.params.get("scope", "").split(" "):
        if s and s not in scopes:
            scopes.append(s)
    service = challenge.params.get("service", "")
    h: dict[str, str] = {"Accept": "application/json"}
    if creds.identity_token is not None:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": creds.identity_token,
            "service": service,
            "scope": " ".join(scopes),
            "client_id": "imaged",
            "access_type": "offline",
        }
        via = proxy_args(proxies, realm, h)
        return session.post(
            URL(realm, encoded=True), data=form, headers=h, allow_redirects=False, ssl=tls, **via
        )
    query: list[tuple[str, str]] = [("service", service)] if service else []
    query += [("scope", s) for s in scopes]
    url = URL(realm, encoded=True).update_query(query)
    basic = creds.basic()
    if basic:
        h["Authorization"] = basic
    via = proxy_args(proxies, realm, h)
    return session.get(url, headers=h, allow_redirects=False, ssl=tls, **via)


async def _answer(
    resp: aiohttp.ClientResponse, realm_host: str, e: Endpoint, creds: Credentials, ref: Reference
) -> bytes:
    """The body of a successful answer; a refusal is UNAUTHENTICATED, anything else UNAVAILABLE."""
    status = resp.status
    if status in (401, 403):
        who = f"user {creds.username!r}" if creds.username else "anonymous access"
        raise Unauthenticated(
            f"token server {realm_host} of {e.host} refused {who} for repository {ref.path}"
        )
    if status == 400:  # OAuth2's invalid_grant: a revoked or expired identity token
        try:
            detail = _oauth_error(await read_capped(resp, MAX_ERROR_BODY))
        except TooLarge:
            detail = ""
        raise Unauthenticated(
            f"token server {realm_host} of {e.host} rejected the request (HTTP 400{detail})"
        )
    if status != 200:
        raise Unavailable(f"token server {realm_host} of {e.host} answered HTTP {status}")
    return await read_capped(resp, MAX_TOKEN_BODY)


def _token(body: bytes, realm_host: str, e: Endpoint) -> tuple[str, float | None]:
    try:
        doc = jsondoc.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise Unavailable(f"token server {realm_host} of {e.host} sent no token")
    expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
    return token, _token_lifetime(expires_in)


def _oauth_error(body: bytes) -> str:
    """`: error: description` of an OAuth2 error answer (RFC 6749 5.2), bounded and printable, or ''."""
    try:
        doc = jsondoc.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [v for v in (doc.get("error"), doc.get("error_description")) if isinstance(v, str) and v]
    text = shown(": ".join(parts))
    return f": {text}" if text else ""


def _token_lifetime(value: object) -> float | None:
    """A token server's `expires_in`, if it is a usable number of seconds (else the default applies):
    not a bool, finite (JSON allows NaN and 400-digit numbers), positive, at most a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, 86400.0)
