"""HTTP to a registry's endpoints: authentication on demand, manual redirects, retries, bounds.

`Pool` is what the views of one client share (the aiohttp session, per-host limits, TLS contexts,
tokens, the endpoint cache); a `Transport` is the pool with one set of credentials. Every request
goes through the endpoints of the registry in order (mirrors, then the registry itself),
authenticates on demand (Basic or Bearer tokens, cached per host, scope and credentials), follows
redirects itself so that `Authorization` never leaves the host it was meant for, and retries
transient failures with backoff. No message or log line carries a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import math
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from imaged.errors import (
    FailedPrecondition,
    ImagedError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    in_context,
)
from imaged.oci import jsondoc
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
from imaged.registry.hosts import Endpoint, endpoints, plain_http
from imaged.registry.proxy import ProxyRules
from imaged.registry.reference import Reference, normalize_host

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
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
ENDPOINT_CACHE_SECONDS = 5.0
# Whether the endpoint being tried has others after it (set by on_endpoints, per task).
_FALLBACK_LEFT: contextvars.ContextVar[bool] = contextvars.ContextVar("fallback_left", default=False)
# Requests made in this task get one try each (see single_attempt).
_ONE_ATTEMPT: contextvars.ContextVar[bool] = contextvars.ContextVar("one_attempt", default=False)
# The total-time limit of the small request running in this task (see whole_request), if any.
_REQUEST_LIMIT: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "request_limit", default=None
)


class Transient(Exception):
    """A failure worth retrying (connection trouble, 408/429/5xx); never leaves the registry package."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str


def content_type(headers: CIMultiDictProxy[str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip()


def _shown(text: str) -> str:
    """A server's error text as it may appear in our messages: printable, at most 200 characters."""
    return "".join(c for c in text if c.isprintable())[:200]


def _registry_error(body: bytes) -> str:
    """`CODE: message` from a distribution error body, bounded and printable, or ''."""
    try:
        doc = jsondoc.loads(body[:MAX_ERROR_BODY])
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code, message = errors[0].get("code", ""), errors[0].get("message", "")
            text = f"{code}: {message}" if code and message else str(code or message)
            return _shown(text)
    except (ValueError, UnicodeDecodeError):
        pass
    return ""


def _oauth_error(body: bytes) -> str:
    """`: error: description` of an OAuth2 error answer (RFC 6749 5.2), bounded and printable, or ''."""
    try:
        doc = jsondoc.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [v for v in (doc.get("error"), doc.get("error_description")) if isinstance(v, str) and v]
    text = _shown(": ".join(parts))
    return f": {text}" if text else ""


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
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


class Pool:
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

    async def close(self) -> None:
        self.closed = True
        if self.session is not None:
            await self.session.close()
            self.session = None


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Requests made inside get one try each, not `retries.attempts`: for a caller with something
    to fall back on, an unreachable registry costs one timeout, not several with backoff."""
    token = _ONE_ATTEMPT.set(True)
    try:
        yield
    finally:
        _ONE_ATTEMPT.reset(token)


def fallback_left() -> bool:
    """Whether the endpoint being tried in this task has others after it."""
    return _FALLBACK_LEFT.get()


class Transport:
    """Requests to registry endpoints with one set of credentials (per-host overrides on top of the
    configured ones); views made by `with_credentials` share the pool.

    `configured=False` (a socket serving callers who must not borrow the node's access): only the
    overrides, i.e. credentials sent with the request; the configured auth, client certificates
    and hosts.toml headers of every endpoint are left out."""

    def __init__(
        self, pool: Pool, overrides: dict[str, Credentials] | None = None, *, configured: bool = True
    ) -> None:
        self.pool = pool
        self.overrides = overrides or {}
        self.configured = configured

    @property
    def config(self) -> RegistriesConfig:
        return self.pool.config

    def with_credentials(self, host: str, username: str, password: str) -> Transport:
        return self.with_auth(host, Credentials(username, password))

    def with_auth(self, host: str, creds: Credentials) -> Transport:
        return Transport(
            self.pool, {**self.overrides, normalize_host(host): creds}, configured=self.configured
        )

    def request_credentials_only(self) -> Transport:
        return Transport(self.pool, self.overrides, configured=False)

    def credentials(self, e: Endpoint, domain: str) -> Credentials:
        names = [normalize_host(e.host)]
        if not e.mirror:
            names.append(normalize_host(domain))
        for name in names:
            if name in self.overrides:
                return self.overrides[name]
        if not self.configured:
            return ANONYMOUS
        for name in names:
            cfg = self.config.host(name)
            if cfg is not None and cfg.auth is not None:
                basic = cfg.auth.basic()
                if basic:
                    return Credentials(basic[0], basic[1])
                if cfg.auth.identity_token is not None:
                    return Credentials(identity_token=cfg.auth.identity_token.get_secret_value())
        return ANONYMOUS

    def endpoints(self, ref: Reference, capability: str, what: str) -> list[Endpoint]:
        eps = [e for e in self.pool.endpoints(ref.domain) if e.can(capability)]
        if not self.configured:  # a client certificate or header is the node's credential too
            eps = [dataclasses.replace(e, client_certs=(), headers=()) for e in eps]
        if not eps:
            raise FailedPrecondition(
                f"{what}: no endpoint of registry {ref.domain} has the {capability!r} capability "
                "(check its hosts.toml)"
            )
        return eps

    def ready(self, e: Endpoint) -> None:
        """Fail before a request, naming the endpoint rather than an operation, when this client is
        closed or the endpoint's TLS settings do not load: that is configuration, not the request."""
        self.pool.get_session()
        self.pool.ssl_for(e)

    async def on_endpoints(
        self, ref: Reference, capability: str, what: str, op: Callable[[Endpoint], Awaitable[T]]
    ) -> T:
        """Run `op` on each endpoint in order until one succeeds; a failing mirror falls through.

        The one place a request's failure gets its context: `what` leads its message (the
        layers below name hosts and objects, never the operation)."""
        eps = self.endpoints(ref, capability, what)
        for i, e in enumerate(eps):
            token = _FALLBACK_LEFT.set(i < len(eps) - 1)
            try:
                self.ready(e)
                try:
                    return await op(e)
                except ImagedError as err:
                    raise in_context(err, what) from err
            except ImagedError as err:
                if i == len(eps) - 1:
                    raise
                log.info("%s: endpoint %s failed (%s); trying %s", what, e, err.message, eps[i + 1])
            finally:
                _FALLBACK_LEFT.reset(token)
        raise AssertionError("unreachable")

    # -- HTTP core --------------------------------------------------------------------------------

    def backoff(self, failures: int, retry_after: float | None) -> float:
        r = self.config.retries
        if retry_after is not None:
            return min(retry_after, r.max_delay)
        base: float = min(r.max_delay, r.base_delay * 2 ** (failures - 1))
        return base * (0.5 + random.random() / 2)

    def _auth_header(self, e: Endpoint, scope: str, creds: Credentials) -> str | None:
        if creds.registry_token is not None:
            return f"Bearer {creds.registry_token}"
        token = self.pool.tokens.get(e.host, scope, creds)
        if token is not None:
            return f"Bearer {token}"
        if e.host in self.pool.basic_hosts:
            return creds.basic()
        return None

    async def send(
        self,
        e: Endpoint,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        ref: Reference,
    ) -> aiohttp.ClientResponse:
        """One request with authentication and manual redirects; returns the final response (open).

        Connection errors become Transient. A 401 is answered once (token fetch or Basic); if the
        registry still says 401 that response is returned for the caller to report.
        """
        session = self.pool.get_session()
        scope = repository_scope(ref.path)
        creds = self.credentials(e, ref.domain)
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
                    ssl=self.pool.ssl_for(e) if same_origin else True,
                    **via,
                )
            except (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError) as err:
                reason = getattr(err, "certificate_error", None) or err
                reason = getattr(reason, "verify_message", None) or reason
                raise Unavailable(
                    f"TLS certificate of {urllib.parse.urlsplit(current).netloc} not trusted: "
                    f"{reason}; configure its CA (registries.hosts.{ref.domain}.tls.ca_file)"
                ) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                netloc = urllib.parse.urlsplit(current).netloc
                if "HTTP request to an HTTPS server" in str(err):
                    raise Unavailable(
                        f"{netloc} speaks HTTPS but was asked in plain HTTP; set "
                        f"registries.hosts.{ref.domain}.plain_http to false or give it a tls section"
                    ) from None
                through = f" through proxy {via['proxy']}" if via else ""
                raise Transient(f"cannot reach {netloc}{through}: {type(err).__name__}: {err}") from None
            log.debug("%s %s -> %d", method, redact_url(current), resp.status)

            if resp.status in REDIRECT_STATUS:
                location = resp.headers.get("Location")
                resp.release()
                hops += 1
                if not location or hops > MAX_REDIRECTS:
                    raise Unavailable(f"{e.host} sent a redirect loop or a redirect without Location")
                try:
                    current = urllib.parse.urljoin(current, location)
                    scheme = urllib.parse.urlsplit(current).scheme
                    URL(current, encoded=True).port  # noqa: B018  (a bad port raises here, not later)
                except ValueError:
                    raise Unavailable(f"{e.host} redirected to a malformed URL") from None
                if scheme not in ("http", "https"):
                    raise Unavailable(f"{e.host} redirected to a non-HTTP URL")
                if resp.status == 303:
                    method = "GET" if method != "HEAD" else method
                continue

            if resp.status == 401 and same_origin and not authed_once:
                # Each header may hold challenges, and a registry may send several headers.
                challenges = parse_www_authenticate(", ".join(resp.headers.getall("WWW-Authenticate", [])))
                resp.release()
                authed_once = True
                await self._authenticate(e, challenges, scope, creds, ref=ref)
                continue
            return resp

    def _via(self, url: str, headers: MutableMapping[str, str]) -> dict[str, Any]:
        """aiohttp's proxy arguments for `url` (none when it is reached directly). Plain http is
        proxied per request, so the proxy's credentials join `headers`; https uses CONNECT."""
        proxy = self.pool.proxies.for_url(url)
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
    ) -> None:
        """Prepare the Authorization for the retry after a 401 (fetch a token, or switch to Basic)."""
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            self.pool.tokens.drop(e.host, scope, creds)
            key = (e.host, scope, creds.fingerprint)
            lock = self.pool.token_locks.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    if self.pool.tokens.get(e.host, scope, creds) is None:
                        token, expires_in = await self._fetch_token(e, bearer, scope, creds, ref=ref)
                        self.pool.tokens.put(e.host, scope, creds, token, expires_in)
            finally:
                # A failed fetch left it too; callers still waiting hold the lock object itself.
                if self.pool.token_locks.get(key) is lock:
                    del self.pool.token_locks[key]
            return
        if any(c.scheme == "basic" for c in challenges):
            if creds.basic() is None:
                raise Unauthenticated(
                    f"{e.host} requires a user name and password for repository {ref.path}; "
                    f"no credentials are configured for {ref.domain}"
                )
            self.pool.basic_hosts.add(e.host)
            return
        raise Unauthenticated(
            f"{e.host} requires authentication with a scheme this client does not support "
            f"({', '.join(sorted({c.scheme for c in challenges})) or 'no challenge given'})"
        )

    async def _fetch_token(
        self,
        e: Endpoint,
        challenge: Challenge,
        scope: str,
        creds: Credentials,
        *,
        ref: Reference,
    ) -> tuple[str, float | None]:
        realm = challenge.realm
        try:
            parts = urllib.parse.urlsplit(realm)
            URL(realm, encoded=True).port  # noqa: B018  (a malformed host or port raises here)
        except ValueError:
            parts = None
        # User information in a realm is refused: it would hide the host it names from the checks
        # below (`http://localhost:1@elsewhere/`) and be sent as credentials of its own.
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
        ):
            raise Unauthenticated(f"{e.host} named an unusable token realm {redact_url(realm)!r}")
        realm_host = parts.netloc
        # The registry's machine (another port, as docker_auth runs beside a registry): plain HTTP
        # to it is what talking plain HTTP to the registry already accepts.
        same_machine = parts.hostname == urllib.parse.urlsplit(f"//{e.host}").hostname
        if (
            parts.scheme == "http"
            and (creds.identity_token is not None or creds.basic() is not None)
            and not plain_http(self.config.host(realm_host), realm_host)
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
        scopes = [scope]
        challenge_scope = challenge.params.get("scope", "")
        for s in challenge_scope.split(" "):
            if s and s not in scopes:
                scopes.append(s)
        service = challenge.params.get("service", "")
        session = self.pool.get_session()
        h: dict[str, str] = {"Accept": "application/json"}
        # The registry's TLS settings (private CA, client certificate) serve its token server too,
        # as containerd's resolver does: Harbor and GitLab put the realm under the same CA.
        tls = self.pool.ssl_for(e) if parts.scheme == "https" else True
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
                body = await read_capped(resp, MAX_TOKEN_BODY)
        except aiohttp.ClientError as err:
            raise Unavailable(
                f"cannot reach token server {realm_host} of {e.host}: {type(err).__name__}"
            ) from None
        except TimeoutError:
            raise Unavailable(f"token server {realm_host} of {e.host} timed out") from None
        except TooLarge:
            raise Unavailable(f"token server {realm_host} of {e.host} sent an oversized answer") from None
        try:
            doc = jsondoc.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server {realm_host} of {e.host} sent no token")
        expires_in = doc.get("expires_in") if isinstance(doc, dict) else None
        return token, _token_lifetime(expires_in)

    async def roundtrip(
        self,
        e: Endpoint,
        method: str,
        url: str,
        *,
        ref: Reference,
        accept: str,
        max_size: int,
    ) -> Response:
        """A whole small request with retries on this endpoint; the body is read up to `max_size`."""
        # A mirror with endpoints after it gets one try: falling through is faster than retrying.
        one = _ONE_ATTEMPT.get() or (e.mirror and _FALLBACK_LEFT.get())
        attempts = 1 if one else self.config.retries.attempts
        failures = 0
        while True:
            try:
                async with self.pool.semaphore(e), self.whole_request(e):
                    resp = await self.send(e, method, url, {"Accept": accept}, ref=ref)
                    try:
                        if resp.status in RETRYABLE_STATUS:
                            raise Transient(
                                f"{e.host} answered HTTP {resp.status}", retry_after(resp.headers)
                            )
                        body = b""
                        if method != "HEAD":
                            cap = max_size if 200 <= resp.status < 300 else MAX_ERROR_BODY
                            try:
                                body = await read_capped(resp, cap)
                            except TooLarge:
                                if 200 <= resp.status < 300:
                                    raise ResourceExhausted(
                                        f"{e.host} sent more than the limit of {max_size} bytes"
                                    ) from None
                                body = b""
                        return Response(resp.status, resp.headers, body, str(resp.url))
                    except (aiohttp.ClientError, TimeoutError) as err:
                        raise Transient(
                            f"reading from {e.host} failed: {type(err).__name__}: {err}"
                        ) from None
                    finally:
                        resp.release()
            except Transient as err:
                failures += 1
                if failures >= attempts:
                    raise Unavailable(f"{err.message} (after {failures} attempt(s))") from err
                delay = self.backoff(failures, err.retry_after)
                log.info("%s %s: %s; retrying in %.1fs", method, redact_url(url), err.message, delay)
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def whole_request(self, e: Endpoint) -> AsyncIterator[None]:
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
            raise Transient(
                f"{e.host} timed out: no complete answer within {limit:g}s (registries.timeouts.request)"
            ) from None

    def status_error(self, r: Response | int, e: Endpoint, ref: Reference, missing: str) -> ImagedError:
        """The error for a non-success answer; `missing` describes the object for 404."""
        status = r if isinstance(r, int) else r.status
        detail = _registry_error(r.body) if isinstance(r, Response) else ""
        suffix = f" ({detail})" if detail else ""
        if status == 404:
            return NotFound(f"{missing} not found on {e.host}{suffix}")
        if status == 401:
            creds = self.credentials(e, ref.domain)
            if creds is ANONYMOUS:
                return Unauthenticated(
                    f"{e.host} requires authentication for repository {ref.path}; no credentials "
                    f"are configured for {ref.domain}{suffix}"
                )
            who = f"user {creds.username!r}" if creds.username else "the configured identity token"
            return Unauthenticated(f"{e.host} rejected {who} for repository {ref.path}{suffix}")
        if status == 403:
            return PermissionDenied(f"{e.host} denied access to repository {ref.path}{suffix}")
        if status == 429:
            return Unavailable(f"{e.host} is rate limiting requests (HTTP 429){suffix}")
        if status >= 500:
            return Unavailable(f"{e.host} failed with HTTP {status}{suffix}")
        if status == 400:
            return InvalidArgument(f"{e.host} rejected the request (HTTP 400){suffix}")
        return FailedPrecondition(f"{e.host} answered HTTP {status}{suffix}")


class TooLarge(Exception):
    pass


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The response body, refusing (without reading on) anything past `cap` bytes."""
    if resp.content_length is not None and resp.content_length > cap:
        raise TooLarge
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise TooLarge
    return bytes(buf)
