"""An async OCI distribution client: resolve, manifests, streamed blobs, referrers, tags.

One aiohttp session (one connection pool) per client; `with_credentials` views share it. Every request
goes through the endpoints of the registry in order (mirrors, then the registry itself), authenticates
on demand (Basic or Bearer tokens, cached per host and scope), follows redirects itself so that
`Authorization` never leaves the host it was meant for, and retries transient failures with backoff.
Everything read from the network is bounded. Failures are ImagedError subclasses naming the reference
and the host; no message or log line carries a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import math
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from imaged.errors import (
    DataLoss,
    FailedPrecondition,
    ImagedError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from imaged.oci import jsondoc
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor, Index, media_type_of, parse_index
from imaged.registry.auth import (
    ANONYMOUS,
    Challenge,
    Credentials,
    TokenCache,
    parse_www_authenticate,
    redact_url,
    repository_scope,
)
from imaged.registry.config import RegistriesConfig
from imaged.registry.hosts import Endpoint, endpoints
from imaged.registry.proxy import ProxyRules
from imaged.registry.reference import Reference, is_localhost, normalize_host, validate_digest

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 64 * 1024
MAX_ERROR_BODY = 64 * 1024
# aiohttp's per-connection read buffer (it stops reading the socket at twice this). Its 64 KiB
# default stalls a blob download each time the writer into containerd waits on a 1 MiB message;
# 1 MiB kept the socket flowing (a 256 MiB pull 5-10% faster), for at most 2 MiB per connection.
READ_BUFFER = 1024 * 1024
MAX_TOKEN_BODY = 1024 * 1024
MAX_REDIRECTS = 10
MAX_PAGES = 20
# Referrers kept from one listing (signature discovery looks at far fewer).
MAX_REFERRERS = 1024
MAX_TAGS = 100_000
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
ENDPOINT_CACHE_SECONDS = 5.0
# Whether the endpoint being tried has others after it (set by _on_endpoints, per task).
_FALLBACK_LEFT: contextvars.ContextVar[bool] = contextvars.ContextVar("fallback_left", default=False)
# The total-time limit of the small request running in this task (see _whole_request), if any.
_REQUEST_LIMIT: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "request_limit", default=None
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)", re.ASCII)


class _Transient(Exception):
    """A failure worth retrying (connection trouble, 408/429/5xx); never leaves this module."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str


def _hash(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _digest_of(data: bytes, like: str) -> str:
    """Digest of `data` with the algorithm of digest `like`."""
    return _hash(like.split(":", 1)[0], data)


def _is_digest(obj: str) -> bool:
    try:
        validate_digest(obj)
    except InvalidArgument:
        return False
    return True


def _content_type(headers: CIMultiDictProxy[str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip()


def _registry_error(body: bytes) -> str:
    """`CODE: message` from a distribution error body, bounded and printable, or ''."""
    try:
        doc = jsondoc.loads(body[:MAX_ERROR_BODY])
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = errors[0].get("code", ""), errors[0].get("message", "")
            text = f"{code}: {message}" if code and message else str(code or message)
            return "".join(c for c in text if c.isprintable())[:200]
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    v = headers.get("Retry-After", "")
    try:
        return max(0.0, float(v)) if v else None
    except ValueError:
        return None


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


def _next_link(headers: CIMultiDictProxy[str], base: str) -> str | None:
    """The `rel="next"` target of a Link header, resolved against `base`; same origin only."""
    for value in headers.getall("Link", []):
        for part in value.split(","):
            m = re.match(r"\s*<([^>]*)>\s*;(.*)$", part)
            if m and re.search(r'rel="?next"?', m.group(2)):
                try:
                    target = urllib.parse.urljoin(base, str(m.group(1)))
                    a, b = urllib.parse.urlsplit(base), urllib.parse.urlsplit(target)
                    b.port  # noqa: B018  (a bad port raises here)
                except ValueError:
                    log.warning("ignoring a malformed pagination link")
                    return None
                if (a.scheme, a.netloc) == (b.scheme, b.netloc):
                    return target
                log.warning("ignoring pagination link to another host: %s", redact_url(target))
    return None


class _Shared:
    """What views of one client share: the session, limits, TLS contexts, tokens, endpoint cache."""

    def __init__(self, config: RegistriesConfig, user_agent: str) -> None:
        self.config = config
        self.user_agent = user_agent
        self.session: aiohttp.ClientSession | None = None
        self.tokens = TokenCache()
        self.token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.basic_hosts: set[str] = set()
        self.semaphores: dict[str, asyncio.Semaphore] = {}
        self.ssl_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self.endpoint_cache: dict[str, tuple[float, list[Endpoint]]] = {}
        self.closed = False
        self.proxies = ProxyRules.from_environment()

    def get_session(self) -> aiohttp.ClientSession:
        if self.closed:
            raise FailedPrecondition("registry client is closed")
        if self.session is None or self.session.closed:
            t = self.config.timeouts
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=128, ttl_dns_cache=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read),
                auto_decompress=False,
                read_bufsize=READ_BUFFER,
                headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"},
            )
        return self.session

    def semaphore(self, e: Endpoint) -> asyncio.Semaphore:
        key = f"{e.scheme}://{e.host}"
        sem = self.semaphores.get(key)
        if sem is None:
            cfg = self.config.host(e.host)
            limit = (
                cfg.max_concurrent_requests if cfg else None
            ) or self.config.max_concurrent_requests_per_host
            sem = self.semaphores[key] = asyncio.Semaphore(limit)
        return sem

    def ssl_for(self, e: Endpoint) -> ssl.SSLContext | bool:
        if e.scheme != "https":
            return True
        if not (e.ca_files or e.client_certs or e.skip_verify):
            return True
        key = (e.ca_files, e.client_certs, e.skip_verify)
        ctx = self.ssl_contexts.get(key)
        if ctx is None:
            ctx = ssl.create_default_context()
            try:
                if e.skip_verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                for ca in e.ca_files:
                    ctx.load_verify_locations(cafile=ca)
                for cert, key_file in e.client_certs:
                    ctx.load_cert_chain(cert, key_file)
            except (OSError, ssl.SSLError) as err:
                raise FailedPrecondition(
                    f"TLS settings for registry endpoint {e}: cannot load CA or client certificate: {err}"
                ) from None
            self.ssl_contexts[key] = ctx
        return ctx

    def endpoints(self, domain: str) -> list[Endpoint]:
        now = time.monotonic()
        cached = self.endpoint_cache.get(domain)
        if cached and now - cached[0] < ENDPOINT_CACHE_SECONDS:
            return cached[1]
        eps = endpoints(self.config, domain)
        self.endpoint_cache[domain] = (now, eps)
        return eps


class RegistryClient:
    """Talks to OCI registries as configured by the `registries` section. Use as `async with`."""

    def __init__(self, config: RegistriesConfig, *, user_agent: str = "imaged/0.1") -> None:
        self._shared = _Shared(config, user_agent)
        self._overrides: dict[str, Credentials] = {}
        self._owner = True

    # -- lifecycle ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool (views: nothing to do; the parent owns the pool)."""
        if not self._owner:
            return
        self._shared.closed = True
        if self._shared.session is not None:
            await self._shared.session.close()
            self._shared.session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def config(self) -> RegistriesConfig:
        return self._shared.config

    def with_credentials(self, host: str, username: str, password: str) -> RegistryClient:
        """A view that uses these credentials for `host` (as in references: `docker.io`, `ghcr.io`).

        Shares the connection pool; the parent is unchanged. Tokens are cached per credentials, so
        the view never uses tokens obtained with other credentials for that host, nor the reverse.
        """
        view = RegistryClient.__new__(RegistryClient)
        view._shared = self._shared
        view._overrides = {**self._overrides, normalize_host(host): Credentials(username, password)}
        view._owner = False
        return view

    # -- credentials and endpoints ------------------------------------------------------------------

    def _credentials(self, e: Endpoint, domain: str) -> Credentials:
        names = [normalize_host(e.host)]
        if not e.mirror:
            names.append(normalize_host(domain))
        for name in names:
            if name in self._overrides:
                return self._overrides[name]
        for name in names:
            cfg = self.config.host(name)
            if cfg is not None and cfg.auth is not None:
                basic = cfg.auth.basic()
                if basic:
                    return Credentials(basic[0], basic[1])
                if cfg.auth.identity_token is not None:
                    return Credentials(identity_token=cfg.auth.identity_token.get_secret_value())
        return ANONYMOUS

    def _endpoints(self, ref: Reference, capability: str, what: str) -> list[Endpoint]:
        eps = [e for e in self._shared.endpoints(ref.domain) if e.can(capability)]
        if not eps:
            raise FailedPrecondition(
                f"{what}: no endpoint of registry {ref.domain} has the {capability!r} capability "
                "(check its hosts.toml)"
            )
        return eps

    async def _on_endpoints(
        self, ref: Reference, capability: str, what: str, op: Callable[[Endpoint], Awaitable[T]]
    ) -> T:
        """Run `op` on each endpoint in order until one succeeds; a failing mirror falls through."""
        eps = self._endpoints(ref, capability, what)
        for i, e in enumerate(eps):
            token = _FALLBACK_LEFT.set(i < len(eps) - 1)
            try:
                return await op(e)
            except ImagedError as err:
                if i == len(eps) - 1:
                    raise
                log.info("%s: endpoint %s failed (%s); trying %s", what, e, err.message, eps[i + 1])
            finally:
                _FALLBACK_LEFT.reset(token)
        raise AssertionError("unreachable")

    # -- HTTP core --------------------------------------------------------------------------------

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        r = self.config.retries
        if retry_after is not None:
            return min(retry_after, r.max_delay)
        base: float = min(r.max_delay, r.base_delay * 2 ** (failures - 1))
        return base * (0.5 + random.random() / 2)

    def _auth_header(self, e: Endpoint, scope: str, creds: Credentials) -> str | None:
        token = self._shared.tokens.get(e.host, scope, creds)
        if token is not None:
            return f"Bearer {token}"
        if e.host in self._shared.basic_hosts:
            return creds.basic()
        return None

    async def _send(
        self,
        e: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        ref: Reference,
        what: str,
    ) -> aiohttp.ClientResponse:
        """One request with authentication and manual redirects; returns the final response (open).

        Connection errors become _Transient. A 401 is answered once (token fetch or Basic); if the
        registry still says 401 that response is returned for the caller to report.
        """
        session = self._shared.get_session()
        scope = repository_scope(ref.path)
        creds = self._credentials(e, ref.domain)
        origin = (e.scheme, e.host)
        authed_once = False
        current = url
        hops = 0
        while True:
            h = CIMultiDict(headers)
            same_origin = urllib.parse.urlsplit(current)[:2] == origin
            if same_origin:
                # Configured headers and credentials are for this endpoint only, never a redirect target.
                for name, value in e.headers:
                    h.add(name, value)
                auth = self._auth_header(e, scope, creds)
                if auth:
                    h["Authorization"] = auth
            via = self._via(current, h)
            try:
                resp = await session.request(
                    method,
                    URL(current, encoded=True),
                    headers=h,
                    allow_redirects=False,
                    ssl=self._shared.ssl_for(e) if same_origin else True,
                    **via,
                )
            except (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError) as err:
                reason = getattr(err, "certificate_error", None) or err
                reason = getattr(reason, "verify_message", None) or reason
                raise Unavailable(
                    f"{what}: TLS certificate of {urllib.parse.urlsplit(current).netloc} not trusted: "
                    f"{reason}; configure its CA (registries.hosts.{ref.domain}.tls.ca_file)"
                ) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                netloc = urllib.parse.urlsplit(current).netloc
                if "HTTP request to an HTTPS server" in str(err):
                    raise Unavailable(
                        f"{what}: {netloc} speaks HTTPS but was asked in plain HTTP; set "
                        f"registries.hosts.{ref.domain}.plain_http to false or give it a tls section"
                    ) from None
                through = f" through proxy {via['proxy']}" if via else ""
                raise _Transient(f"cannot reach {netloc}{through}: {type(err).__name__}: {err}") from None
            log.debug("%s %s -> %d", method, redact_url(current), resp.status)

            if resp.status in REDIRECT_STATUS:
                location = resp.headers.get("Location")
                resp.release()
                hops += 1
                if not location or hops > MAX_REDIRECTS:
                    raise Unavailable(f"{what}: {e.host} sent a redirect loop or a redirect without Location")
                try:
                    current = urllib.parse.urljoin(current, location)
                    scheme = urllib.parse.urlsplit(current).scheme
                    URL(current, encoded=True).port  # noqa: B018  (a bad port raises here, not later)
                except ValueError:
                    raise Unavailable(f"{what}: {e.host} redirected to a malformed URL") from None
                if scheme not in ("http", "https"):
                    raise Unavailable(f"{what}: {e.host} redirected to a non-HTTP URL")
                if resp.status == 303:
                    method = "GET" if method != "HEAD" else method
                continue

            if resp.status == 401 and same_origin and not authed_once:
                # Each header may hold challenges, and a registry may send several headers.
                challenges = parse_www_authenticate(", ".join(resp.headers.getall("WWW-Authenticate", [])))
                resp.release()
                authed_once = True
                await self._authenticate(e, challenges, scope, creds, ref=ref, what=what)
                continue
            return resp

    def _via(self, url: str, headers: MutableMapping[str, str]) -> dict[str, Any]:
        """aiohttp's proxy arguments for `url` (none when it is reached directly). Plain http is
        proxied per request, so the proxy's credentials join `headers`; https uses CONNECT."""
        proxy = self._shared.proxies.for_url(url)
        if proxy is None:
            return {}
        if url.startswith("http:"):
            headers.update(proxy.headers)
        return {"proxy": proxy.url, "proxy_headers": proxy.headers}

    async def _authenticate(
        self,
        e: Endpoint,
        challenges: list[Challenge],
        scope: str,
        creds: Credentials,
        *,
        ref: Reference,
        what: str,
    ) -> None:
        """Prepare the Authorization for the retry after a 401 (fetch a token, or switch to Basic)."""
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            self._shared.tokens.drop(e.host, scope, creds)
            key = (e.host, scope, creds.fingerprint)
            lock = self._shared.token_locks.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    if self._shared.tokens.get(e.host, scope, creds) is None:
                        token, expires_in = await self._fetch_token(
                            e, bearer, scope, creds, ref=ref, what=what
                        )
                        self._shared.tokens.put(e.host, scope, creds, token, expires_in)
            finally:
                # A failed fetch left it too; callers still waiting hold the lock object itself.
                if self._shared.token_locks.get(key) is lock:
                    del self._shared.token_locks[key]
            return
        if any(c.scheme == "basic" for c in challenges):
            if creds.basic() is None:
                raise Unauthenticated(
                    f"{what}: {e.host} requires a user name and password for repository {ref.path}; "
                    f"no credentials are configured for {ref.domain}"
                )
            self._shared.basic_hosts.add(e.host)
            return
        raise Unauthenticated(
            f"{what}: {e.host} requires authentication with a scheme this client does not support "
            f"({', '.join(sorted({c.scheme for c in challenges})) or 'no challenge given'})"
        )

    def _plain_http_host(self, netloc: str) -> bool:
        """Whether plain HTTP to `netloc` is accepted, as it would be for a registry there: its
        `plain_http` setting, or by default for localhost and loopback without a `tls` section."""
        cfg = self.config.host(netloc)
        if cfg is not None and cfg.plain_http is not None:
            return cfg.plain_http
        return is_localhost(netloc) and (cfg is None or cfg.tls is None)

    async def _fetch_token(
        self,
        e: Endpoint,
        challenge: Challenge,
        scope: str,
        creds: Credentials,
        *,
        ref: Reference,
        what: str,
    ) -> tuple[str, float | None]:
        realm = challenge.realm
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Unauthenticated(f"{what}: {e.host} named an unusable token realm {redact_url(realm)!r}")
        realm_host = parts.netloc
        if (
            parts.scheme == "http"
            and e.scheme == "https"
            and (creds.identity_token is not None or creds.basic() is not None)
            and not self._plain_http_host(realm_host)
        ):
            # containerd would send them; over the network they would be readable by anyone on the path.
            raise FailedPrecondition(
                f"{what}: {e.host} sends clients to token server {realm_host} over plain HTTP, and the "
                f"credentials configured for {ref.domain} are not sent unencrypted; serve the token realm "
                f"over HTTPS, or accept plain HTTP to that host with "
                f"registries.hosts.{realm_host}.plain_http: true"
            )
        scopes = [scope]
        challenge_scope = challenge.params.get("scope", "")
        for s in challenge_scope.split(" "):
            if s and s not in scopes:
                scopes.append(s)
        service = challenge.params.get("service", "")
        session = self._shared.get_session()
        h: dict[str, str] = {"Accept": "application/json"}
        # The registry's TLS settings (private CA, client certificate) serve its token server too,
        # as containerd's resolver does: Harbor and GitLab put the realm under the same CA.
        tls = self._shared.ssl_for(e) if parts.scheme == "https" else True
        try:
            if creds.identity_token is not None:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "scope": " ".join(scopes),
                    "client_id": "imaged",
                    "access_type": "offline",
                }
                via = self._via(realm, h)
                req = session.post(
                    URL(realm, encoded=True), data=form, headers=h, allow_redirects=False, ssl=tls, **via
                )
            else:
                query: list[tuple[str, str]] = [("service", service)] if service else []
                query += [("scope", s) for s in scopes]
                url = URL(realm, encoded=True).update_query(query)
                basic = creds.basic()
                if basic:
                    h["Authorization"] = basic
                via = self._via(realm, h)
                req = session.get(url, headers=h, allow_redirects=False, ssl=tls, **via)
            # The token fetch has its own limit; the request waiting for it gets as much more time.
            limit = self.config.timeouts.request
            outer = _REQUEST_LIMIT.get()
            if outer is not None and (when := outer.when()) is not None:
                outer.reschedule(when + limit)
            async with asyncio.timeout(limit), req as resp:
                status = resp.status
                if status in (401, 403):
                    who = f"user {creds.username!r}" if creds.username else "anonymous access"
                    raise Unauthenticated(
                        f"{what}: token server {realm_host} of {e.host} refused {who} "
                        f"for repository {ref.path}"
                    )
                if status != 200:
                    raise Unavailable(f"{what}: token server {realm_host} of {e.host} answered HTTP {status}")
                body = await _read_capped(resp, MAX_TOKEN_BODY)
        except aiohttp.ClientError as err:
            raise Unavailable(
                f"{what}: cannot reach token server {realm_host} of {e.host}: {type(err).__name__}"
            ) from None
        except TimeoutError:
            raise Unavailable(f"{what}: token server {realm_host} of {e.host} timed out") from None
        except _TooLarge:
            raise Unavailable(
                f"{what}: token server {realm_host} of {e.host} sent an oversized answer"
            ) from None
        try:
            doc = jsondoc.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"{what}: token server {realm_host} of {e.host} sent no token")
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        return token, _token_lifetime(expires_in)

    async def _roundtrip(
        self,
        e: Endpoint,
        method: str,
        url: str,
        *,
        ref: Reference,
        what: str,
        accept: str,
        max_size: int,
    ) -> _Response:
        """A whole small request with retries on this endpoint; the body is read up to `max_size`."""
        # A mirror with endpoints after it gets one try: falling through is faster than retrying.
        attempts = 1 if e.mirror and _FALLBACK_LEFT.get() else self.config.retries.attempts
        failures = 0
        while True:
            try:
                async with self._shared.semaphore(e), self._whole_request(e):
                    resp = await self._send(e, method, url, {"Accept": accept}, ref=ref, what=what)
                    try:
                        if resp.status in RETRYABLE_STATUS:
                            raise _Transient(
                                f"{e.host} answered HTTP {resp.status}", _retry_after(resp.headers)
                            )
                        body = b""
                        if method != "HEAD":
                            cap = max_size if 200 <= resp.status < 300 else MAX_ERROR_BODY
                            try:
                                body = await _read_capped(resp, cap)
                            except _TooLarge:
                                if 200 <= resp.status < 300:
                                    raise ResourceExhausted(
                                        f"{what}: {e.host} sent more than the limit of {max_size} bytes"
                                    ) from None
                                body = b""
                        return _Response(resp.status, resp.headers, body, str(resp.url))
                    except (aiohttp.ClientError, TimeoutError) as err:
                        raise _Transient(
                            f"reading from {e.host} failed: {type(err).__name__}: {err}"
                        ) from None
                    finally:
                        resp.release()
            except _Transient as err:
                failures += 1
                if failures >= attempts:
                    raise Unavailable(f"{what}: {err.message} (after {failures} attempt(s))") from None
                delay = self._backoff(failures, err.retry_after)
                log.info("%s: %s; retrying in %.1fs", what, err.message, delay)
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def _whole_request(self, e: Endpoint) -> AsyncIterator[None]:
        """Bound one small request in total (`timeouts.request`), headers and body: the idle
        timeout alone lets a server that sends a byte now and then hold a call forever."""
        limit = self.config.timeouts.request
        try:
            async with asyncio.timeout(limit) as t:
                token = _REQUEST_LIMIT.set(t)
                try:
                    yield
                finally:
                    _REQUEST_LIMIT.reset(token)
        except TimeoutError:
            raise _Transient(
                f"{e.host} timed out: no complete answer within {limit:g}s (registries.timeouts.request)"
            ) from None

    def _status_error(
        self, r: _Response | int, e: Endpoint, ref: Reference, what: str, missing: str
    ) -> ImagedError:
        """The error for a non-success answer; `missing` describes the object for 404."""
        status = r if isinstance(r, int) else r.status
        detail = _registry_error(r.body) if isinstance(r, _Response) else ""
        suffix = f" ({detail})" if detail else ""
        if status == 404:
            return NotFound(f"{what}: {missing} not found on {e.host}{suffix}")
        if status == 401:
            creds = self._credentials(e, ref.domain)
            if creds is ANONYMOUS:
                return Unauthenticated(
                    f"{what}: {e.host} requires authentication for repository {ref.path}; no credentials "
                    f"are configured for {ref.domain}{suffix}"
                )
            who = f"user {creds.username!r}" if creds.username else "the configured identity token"
            return Unauthenticated(f"{what}: {e.host} rejected {who} for repository {ref.path}{suffix}")
        if status == 403:
            return PermissionDenied(f"{what}: {e.host} denied access to repository {ref.path}{suffix}")
        if status == 429:
            return Unavailable(f"{what}: {e.host} is rate limiting requests (HTTP 429){suffix}")
        if status >= 500:
            return Unavailable(f"{what}: {e.host} failed with HTTP {status}{suffix}")
        if status == 400:
            return InvalidArgument(f"{what}: {e.host} rejected the request (HTTP 400){suffix}")
        return FailedPrecondition(f"{what}: {e.host} answered HTTP {status}{suffix}")

    # -- manifests --------------------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest or index `ref` names."""
        what = f"resolving {ref}"
        capability = "pull" if ref.digest else "resolve"
        accept = mt.ACCEPT_MANIFESTS
        max_size = self.config.max_manifest_size

        async def op(e: Endpoint) -> Descriptor:
            url = e.url(f"/{ref.path}/manifests/{ref.object}")
            r = await self._roundtrip(e, "HEAD", url, ref=ref, what=what, accept=accept, max_size=0)
            if r.status == 200:
                media_type = _content_type(r.headers)
                if media_type in mt.SCHEMA1:
                    raise _schema1(what, e)
                digest = r.headers.get("Docker-Content-Digest", "")
                size = r.headers.get("Content-Length", "")
                if (
                    _is_digest(digest)
                    and (not ref.digest or digest == ref.digest)
                    and size.isdigit()
                    and media_type in (mt.INDEXES | mt.MANIFESTS)
                ):
                    if int(size) > max_size:
                        raise ResourceExhausted(
                            f"{what}: manifest on {e.host} is {size} bytes, over the limit of {max_size}"
                        )
                    return Descriptor(media_type, digest, int(size))
            elif r.status not in (405, 400, 501):
                raise self._status_error(r, e, ref, what, f"image {ref}")
            # No usable answer to HEAD: GET the manifest and hash it.
            body, media_type, digest = await self._get_manifest_on(e, ref, ref.object, accept, max_size, what)
            return Descriptor(media_type, digest, len(body))

        return await self._on_endpoints(ref, capability, what, op)

    async def get_manifest(
        self,
        ref: Reference,
        obj: str,
        *,
        accept: str = mt.ACCEPT_MANIFESTS,
        max_size: int | None = None,
        fallback_tag: str | None = None,
    ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of manifest `obj` (a digest or a tag) in `ref`'s repository.

        A digest `obj` is verified (DataLoss on mismatch). With `fallback_tag`, a digest that is not
        found is fetched by that tag instead, and must still hash to `obj` (some registries serve
        signature manifests only by tag).
        """
        cap = max_size if max_size is not None else self.config.max_manifest_size
        what = f"fetching manifest {obj} of {ref.repository}"
        is_digest = _is_digest(obj)
        if not is_digest and not re.fullmatch(r"[\w][\w.-]{0,127}", obj, re.ASCII):
            raise InvalidArgument(f"{what}: {obj!r} is neither a digest nor a tag")
        capability = "pull" if is_digest else "resolve"
        try:
            return await self._on_endpoints(
                ref, capability, what, lambda e: self._get_manifest_on(e, ref, obj, accept, cap, what)
            )
        except NotFound:
            if not (is_digest and fallback_tag):
                raise
        body, media_type, _ = await self.get_manifest(ref, fallback_tag, accept=accept, max_size=cap)
        actual = _digest_of(body, obj)
        if actual != obj:
            raise DataLoss(
                f"{what}: {ref.domain} has no manifest {obj}, and tag {fallback_tag} serves {actual} instead"
            )
        return body, media_type, obj

    async def _get_manifest_on(
        self, e: Endpoint, ref: Reference, obj: str, accept: str, max_size: int, what: str
    ) -> tuple[bytes, str, str]:
        url = e.url(f"/{ref.path}/manifests/{obj}")
        r = await self._roundtrip(e, "GET", url, ref=ref, what=what, accept=accept, max_size=max_size)
        if r.status != 200:
            shown = f"{ref.repository}@{obj}" if _is_digest(obj) else f"{ref.repository}:{obj}"
            raise self._status_error(r, e, ref, what, f"manifest {shown}")
        if _is_digest(obj):
            actual = _digest_of(r.body, obj)
            if actual != obj:
                raise DataLoss(f"{what}: {e.host} served a manifest with digest {actual} instead of {obj}")
            digest = obj
        else:
            digest = _hash("sha256", r.body)
        try:
            media_type = media_type_of(r.body, _content_type(r.headers))
        except InvalidArgument as err:
            raise InvalidArgument(
                f"{what}: {e.host} served something that is not a manifest: {err.message}"
            ) from None
        if media_type in mt.SCHEMA1:
            raise _schema1(what, e)
        return r.body, media_type, digest

    # -- blobs ------------------------------------------------------------------------------------

    async def fetch_blob(self, ref: Reference, desc: Descriptor, *, offset: int = 0) -> AsyncIterator[bytes]:
        """Stream blob `desc` from byte `offset` on; resumes after transient failures.

        Yields exactly `desc.size - offset` bytes in total or raises: DataLoss when the registry sends
        more or fewer bytes than the descriptor says. The digest is the caller's to verify (the content
        store does it on commit). Close the iterator (`contextlib.aclosing`) when stopping early.
        """
        what = f"fetching blob {desc.digest} of {ref.repository}"
        validate_digest(desc.digest)
        if not 0 <= offset <= desc.size:
            raise InvalidArgument(f"{what}: offset {offset} outside the blob's {desc.size} bytes")
        limit = self.config.max_blob_size
        if limit is not None and desc.size > limit:
            raise ResourceExhausted(
                f"{what}: blob is {desc.size} bytes, over the limit of {limit} (max_blob_size)"
            )
        if offset == desc.size:
            return
        eps = self._endpoints(ref, "pull", what)
        pos = offset
        for i, e in enumerate(eps):
            last = i == len(eps) - 1
            attempts = 1 if e.mirror and not last else self.config.retries.attempts
            failures = 0
            while True:
                try:
                    async with contextlib.aclosing(self._blob_stream(e, ref, desc, pos, what)) as stream:
                        async for chunk in stream:
                            pos += len(chunk)
                            failures = 0  # progress: the next failure starts a new count
                            yield chunk
                    if pos != desc.size:  # pragma: no cover - _blob_stream guarantees it
                        raise DataLoss(f"{what}: {e.host} ended the blob at byte {pos} of {desc.size}")
                    return
                except _Transient as err:
                    failures += 1
                    if failures >= attempts:
                        if last:
                            raise Unavailable(
                                f"{what}: {err.message} (after {failures} attempt(s), "
                                f"at byte {pos} of {desc.size})"
                            ) from None
                        log.info("%s: mirror %s failed (%s); trying %s", what, e, err.message, eps[i + 1])
                        break
                    delay = self._backoff(failures, err.retry_after)
                    log.info("%s: %s at byte %d; resuming in %.1fs", what, err.message, pos, delay)
                    await asyncio.sleep(delay)
                except ImagedError as err:
                    if last:
                        raise
                    log.info("%s: mirror %s failed (%s); trying %s", what, e, err.message, eps[i + 1])
                    break

    async def _blob_stream(
        self, e: Endpoint, ref: Reference, desc: Descriptor, pos: int, what: str
    ) -> AsyncGenerator[bytes, None]:
        """One GET of the blob from `pos`; yields at most `desc.size - pos` bytes, exactly that or raises."""
        url = e.url(f"/{ref.path}/blobs/{desc.digest}")
        headers = {"Accept": "*/*"}
        if pos:
            headers["Range"] = f"bytes={pos}-"
        want = desc.size - pos
        async with self._shared.semaphore(e):
            async with self._whole_request(e):  # until the headers: the body is bounded by `read`
                resp = await self._send(e, "GET", url, headers, ref=ref, what=what)
            try:
                status = resp.status
                if status in RETRYABLE_STATUS:
                    raise _Transient(f"{e.host} answered HTTP {status}", _retry_after(resp.headers))
                if status == 416:
                    raise DataLoss(
                        f"{what}: {e.host} cannot serve bytes from {pos}: the blob is shorter than the "
                        f"{desc.size} bytes its descriptor says"
                    )
                if status not in (200, 206):
                    body = b""
                    try:
                        async with asyncio.timeout(self.config.timeouts.request):
                            body = await _read_capped(resp, MAX_ERROR_BODY)
                    except (_TooLarge, aiohttp.ClientError, TimeoutError):
                        pass
                    r = _Response(status, resp.headers, body, str(resp.url))
                    raise self._status_error(r, e, ref, what, f"blob {desc.digest} of {ref.repository}")
                skip = 0
                if status == 206:
                    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                    if m is None:
                        raise DataLoss(
                            f"{what}: {e.host} sent a partial answer without a valid Content-Range"
                        )
                    start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
                    if start > pos or (total != "*" and int(total) != desc.size):
                        raise DataLoss(
                            f"{what}: {e.host} sent bytes {start}-{end}/{total}, "
                            f"expected {pos}- of {desc.size}"
                        )
                    skip = pos - start
                    expected_length = end - start + 1
                else:
                    skip = pos  # Range ignored: the whole blob comes again
                    expected_length = desc.size
                if resp.content_length is not None and resp.content_length != expected_length:
                    raise DataLoss(
                        f"{what}: {e.host} announced {resp.content_length} bytes, expected {expected_length} "
                        f"(descriptor size {desc.size})"
                    )
                sent = 0
                try:
                    # Each piece as the socket delivered it: no re-slicing copy, and nothing
                    # received is held back (when a connection breaks, aiohttp raises before it
                    # hands out what it still buffered, and the resume starts after the last piece).
                    async for chunk in resp.content.iter_any():
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk, skip = chunk[skip:], 0
                        if sent + len(chunk) > want:
                            raise DataLoss(
                                f"{what}: {e.host} sent more than the {desc.size} bytes the descriptor says"
                            )
                        sent += len(chunk)
                        yield chunk
                except (aiohttp.ClientError, TimeoutError) as err:
                    raise _Transient(f"download from {e.host} broke: {type(err).__name__}: {err}") from None
                if sent != want:
                    if resp.content_length is None:
                        # No length announced: a closed connection looks like a normal end; retry.
                        raise _Transient(
                            f"{e.host} ended the download early ({pos + sent} of {desc.size} bytes)"
                        )
                    raise DataLoss(f"{what}: {e.host} sent {pos + sent} of {desc.size} bytes")
            finally:
                resp.release()

    async def get_blob(self, ref: Reference, digest: str, *, max_size: int) -> bytes:
        """A small blob (a config, a signature payload), verified against `digest`."""
        validate_digest(digest)
        what = f"fetching blob {digest} of {ref.repository}"

        async def op(e: Endpoint) -> bytes:
            url = e.url(f"/{ref.path}/blobs/{digest}")
            r = await self._roundtrip(e, "GET", url, ref=ref, what=what, accept="*/*", max_size=max_size)
            if r.status != 200:
                raise self._status_error(r, e, ref, what, f"blob {digest} of {ref.repository}")
            actual = _digest_of(r.body, digest)
            if actual != digest:
                raise DataLoss(f"{what}: {e.host} served content with digest {actual} instead of {digest}")
            return r.body

        return await self._on_endpoints(ref, "pull", what, op)

    # -- referrers and tags -----------------------------------------------------------------------

    async def referrers(
        self, ref: Reference, digest: str, *, artifact_type: str | None = None
    ) -> Index | None:
        """The OCI referrers index of `digest`, or None if the registry has no referrers API.

        Filtered by `artifact_type` here when the registry did not apply the filter itself.
        """
        validate_digest(digest)
        what = f"listing referrers of {ref.repository}@{digest}"
        max_size = self.config.max_manifest_size

        mirror_without_api = False

        async def op(e: Endpoint) -> Index | None:
            def no_api(why: str) -> Index | None:
                # A mirror without the API (a pull-through cache) says nothing of the upstream's.
                nonlocal mirror_without_api
                if _FALLBACK_LEFT.get():
                    mirror_without_api = True
                    raise NotFound(f"{what}: {e.host} has no referrers API ({why})")
                return None

            url = e.url(f"/{ref.path}/referrers/{digest}")
            if artifact_type:
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"artifactType": artifact_type})
            manifests: list[Descriptor] = []
            first: Index | None = None
            for _ in range(MAX_PAGES):
                r = await self._roundtrip(
                    e, "GET", url, ref=ref, what=what, accept=mt.OCI_INDEX, max_size=max_size
                )
                if r.status in (404, 400, 405, 406, 501):
                    if first is None:
                        return no_api(f"HTTP {r.status}")
                    break
                if r.status != 200:
                    raise self._status_error(r, e, ref, what, f"referrers of {digest}")
                if _content_type(r.headers) not in (mt.OCI_INDEX, "application/json", ""):
                    return no_api(f"answered {_content_type(r.headers)}")
                try:
                    page = parse_index(r.body, f"referrers index from {e.host}")
                except InvalidArgument:
                    return no_api("not an OCI index")
                first = first or page
                items = page.manifests
                if artifact_type and "artifactType" not in r.headers.get("OCI-Filters-Applied", ""):
                    items = tuple(m for m in items if m.artifact_type == artifact_type)
                # Kept up to a bound: 20 pages of 4 MiB would be hundreds of thousands of them.
                manifests.extend(items[: MAX_REFERRERS - len(manifests)])
                nxt = _next_link(r.headers, r.url)
                if nxt is None or len(manifests) >= MAX_REFERRERS:
                    break
                url = nxt
            assert first is not None
            return Index(first.media_type, tuple(manifests), first.subject, first.annotations)

        try:
            return await self._on_endpoints(ref, "pull", what, op)
        except NotFound:
            return None
        except ImagedError:
            if mirror_without_api:
                # The upstream could not be asked: as the mirror said, no API (discovery goes on
                # to the tags, which the mirror serves), rather than failing the verification.
                return None
            raise

    async def list_tags(self, ref: Reference, *, limit: int = 10_000) -> list[str]:
        """Tags of `ref`'s repository (at most `limit`, following pagination)."""
        what = f"listing tags of {ref.repository}"
        limit = min(limit, MAX_TAGS)

        async def op(e: Endpoint) -> list[str]:
            url = e.url(f"/{ref.path}/tags/list")
            url += ("&" if "?" in url else "?") + f"n={min(limit, 1000)}"
            tags: list[str] = []
            for _ in range(MAX_PAGES * 50):
                r = await self._roundtrip(
                    e, "GET", url, ref=ref, what=what, accept="application/json", max_size=8 * 1024 * 1024
                )
                if r.status != 200:
                    raise self._status_error(r, e, ref, what, f"repository {ref.repository}")
                try:
                    doc = jsondoc.loads(r.body)
                except (ValueError, UnicodeDecodeError):
                    raise InvalidArgument(f"{what}: {e.host} sent a tag list that is not JSON") from None
                page = doc.get("tags") if isinstance(doc, dict) else None
                if page is None:
                    page = []
                if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                    raise InvalidArgument(f"{what}: {e.host} sent a malformed tag list")
                tags.extend(page)
                if len(tags) >= limit:
                    return tags[:limit]
                nxt = _next_link(r.headers, r.url)
                if nxt is None or not page:
                    break
                url = nxt
            return tags

        return await self._on_endpoints(ref, "resolve", what, op)


class _TooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The response body, refusing (without reading on) anything past `cap` bytes."""
    if resp.content_length is not None and resp.content_length > cap:
        raise _TooLarge
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise _TooLarge
    return bytes(buf)


def _schema1(what: str, e: Endpoint) -> InvalidArgument:
    return InvalidArgument(
        f"{what}: {e.host} serves a Docker schema 1 manifest, which is deprecated and not supported; "
        "push the image again with a current tool"
    )
