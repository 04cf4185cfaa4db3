"""HTTP to a registry's endpoints: authentication on demand, manual redirects, retries, bounds.

`Pool` is what the views of one client share (the aiohttp session, per-host limits, TLS contexts,
tokens, the endpoint cache); a `Transport` is the pool with one set of credentials. Every request
goes through the endpoints of the registry in order (mirrors, then the registry itself),
authenticates on demand (Basic or Bearer tokens, cached per host, scope and credentials), follows
redirects itself so that `Authorization` never leaves the host it was meant for, and retries
transient failures with backoff. No message or log line carries a secret.

How an operation's requests are made on one endpoint (which one, how many tries, whether others
follow) is a `Route`, passed down explicitly; `open` is the one way a request is opened, for
small answers read whole (`roundtrip`) and for blob streams alike. The answers themselves are
`http`'s, the token flow `token`'s, the errors for status codes `status`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from imaged.errors import (
    FailedPrecondition,
    ImagedError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    in_context,
)
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
from imaged.registry.http import (
    MAX_ERROR_BODY,
    Response,
    TooLarge,
    Transient,
    proxy_args,
    read_capped,
    retry_after,
)
from imaged.registry.proxy import ProxyRules
from imaged.registry.reference import Reference, normalize_host
from imaged.registry.status import status_error
from imaged.registry.token import fetch_token

log = logging.getLogger(__name__)

T = TypeVar("T")

# aiohttp's per-connection read buffer (it stops reading the socket at twice this). Its 64 KiB
# default stalls a blob download each time the writer into containerd waits on a 1 MiB message;
# 1 MiB kept the socket flowing (a 256 MiB pull 5-10% faster), for at most 2 MiB per connection.
READ_BUFFER = 1024 * 1024
MAX_REDIRECTS = 10
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
ENDPOINT_CACHE_SECONDS = 5.0


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


@dataclass(frozen=True, slots=True)
class Route:
    """How an operation's requests are made on one endpoint: for `ref`'s repository, with
    `attempts` tries each, and whether other endpoints follow (`fallback_left`: then a failure
    falls through to them, and a mirror gets one try, falling through being faster)."""

    endpoint: Endpoint
    ref: Reference
    attempts: int
    fallback_left: bool


class Retries:
    """The tries of one request on one route, with backoff between them."""

    def __init__(self, transport: Transport, route: Route) -> None:
        self.transport = transport
        self.route = route
        self.failures = 0

    def progressed(self) -> None:
        """The request got somewhere (bytes arrived): the next failure starts a new count."""
        self.failures = 0

    async def again(self, err: Transient, doing: str) -> bool:
        """After `err`: wait and say True while tries are left, else say False at once."""
        self.failures += 1
        if self.failures >= self.route.attempts:
            return False
        delay = self.transport.backoff(self.failures, err.retry_after)
        log.info("%s: %s; retrying in %.1fs", doing, err.message, delay)
        await asyncio.sleep(delay)
        return True


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

    def routes(self, ref: Reference, capability: str, what: str, attempts: int | None = None) -> list[Route]:
        """The endpoints to try in order, as routes; `attempts` per request (None:
        `retries.attempts`)."""
        eps = self.endpoints(ref, capability, what)
        tries = attempts or self.config.retries.attempts
        return [
            Route(e, ref, 1 if e.mirror and i < len(eps) - 1 else tries, i < len(eps) - 1)
            for i, e in enumerate(eps)
        ]

    def ready(self, e: Endpoint) -> None:
        """Fail before a request, naming the endpoint rather than an operation, when this client is
        closed or the endpoint's TLS settings do not load: that is configuration, not the request."""
        self.pool.get_session()
        self.pool.ssl_for(e)

    async def on_endpoints(
        self,
        ref: Reference,
        capability: str,
        what: str,
        op: Callable[[Route], Awaitable[T]],
        *,
        attempts: int | None = None,
    ) -> T:
        """Run `op` on each endpoint in order until one succeeds; a failing mirror falls through.

        The one place a request's failure gets its context: `what` leads its message (the
        layers below name hosts and objects, never the operation)."""
        routes = self.routes(ref, capability, what, attempts)
        for i, route in enumerate(routes):
            try:
                self.ready(route.endpoint)
                try:
                    return await op(route)
                except ImagedError as err:
                    raise in_context(err, what) from err
            except ImagedError as err:
                if not route.fallback_left:
                    raise
                nxt = routes[i + 1].endpoint
                log.info("%s: endpoint %s failed (%s); trying %s", what, route.endpoint, err.message, nxt)
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

    @contextlib.asynccontextmanager
    async def open(
        self, route: Route, method: str, url: str, headers: dict[str, str], *, whole: bool = False
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request within the endpoint's limit of concurrent requests: the answer, open until
        the block ends. A retryable status (408, 429, 5xx) is Transient. `timeouts.request` bounds
        the headers, and with `whole` the body too (a blob's body is bounded by reads instead)."""
        e = route.endpoint
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.pool.semaphore(e))
            if whole:
                limit = await stack.enter_async_context(self._time_limit(e))
                resp = await self.send(route, method, url, headers, limit=limit)
            else:
                async with self._time_limit(e) as limit:
                    resp = await self.send(route, method, url, headers, limit=limit)
            stack.callback(resp.release)
            if resp.status in RETRYABLE_STATUS:
                raise Transient(f"{e.host} answered HTTP {resp.status}", retry_after(resp.headers))
            yield resp

    @contextlib.asynccontextmanager
    async def _time_limit(self, e: Endpoint) -> AsyncIterator[asyncio.Timeout]:
        """Bound one small request in total (`timeouts.request`): the idle timeout alone lets a
        server that sends a byte now and then hold a call forever."""
        limit = self.config.timeouts.request
        try:
            async with asyncio.timeout(limit) as t:
                yield t
        except TimeoutError:
            raise Transient(
                f"{e.host} timed out: no complete answer within {limit:g}s (registries.timeouts.request)"
            ) from None

    async def roundtrip(self, route: Route, method: str, url: str, *, accept: str, max_size: int) -> Response:
        """A whole small request with retries on this route; the body is read up to `max_size`."""
        e = route.endpoint
        retries = Retries(self, route)
        while True:
            try:
                async with self.open(route, method, url, {"Accept": accept}, whole=True) as resp:
                    try:
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
            except Transient as err:
                if not await retries.again(err, f"{method} {redact_url(url)}"):
                    raise Unavailable(f"{err.message} (after {retries.failures} attempt(s))") from err

    def status_error(self, r: Response | int, route: Route, missing: str) -> ImagedError:
        """The error for a non-success answer; `missing` describes the object for 404."""
        e, ref = route.endpoint, route.ref
        return status_error(r, e.host, ref, missing, self.credentials(e, ref.domain))

    async def send(
        self,
        route: Route,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        limit: asyncio.Timeout | None = None,
    ) -> aiohttp.ClientResponse:
        """One request with authentication and manual redirects; returns the final response (open).

        Connection errors become Transient. A 401 is answered once (token fetch or Basic); if the
        registry still says 401 that response is returned for the caller to report. `limit`: the
        request's time limit, which a token fetch extends by its own.
        """
        e, ref = route.endpoint, route.ref
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
            via = proxy_args(self.pool.proxies, current, h)
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
                await self._authenticate(route, challenges, scope, creds, limit=limit)
                continue
            return resp

    async def _authenticate(
        self,
        route: Route,
        challenges: list[Challenge],
        scope: str,
        creds: Credentials,
        *,
        limit: asyncio.Timeout | None,
    ) -> None:
        """Prepare the Authorization for the retry after a 401 (fetch a token, or switch to Basic)."""
        e, ref = route.endpoint, route.ref
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            self.pool.tokens.drop(e.host, scope, creds)
            key = (e.host, scope, creds.fingerprint)
            lock = self.pool.token_locks.setdefault(key, asyncio.Lock())
            try:
                async with lock:
                    if self.pool.tokens.get(e.host, scope, creds) is None:
                        token, expires_in = await fetch_token(
                            self.pool.get_session(),
                            self.pool.proxies,
                            e,
                            bearer,
                            scope,
                            creds,
                            ref=ref,
                            config=self.config,
                            tls=self.pool.ssl_for(e),
                            limit=limit,
                        )
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
