"""An async OCI distribution client: resolve, manifests, streamed blobs, referrers, tags.

The operations of the distribution API, each checked and bounded (digests verified, sizes capped,
schema 1 refused, blobs resumed with `Range`); how a request reaches the registry (endpoints,
authentication, redirects, retries) is `transport`'s. Failures are ImagedError subclasses naming the
reference and the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import NamedTuple, Self

import aiohttp
from multidict import CIMultiDictProxy

from imaged.errors import (
    DataLoss,
    ImagedError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    in_context,
)
from imaged.oci import jsondoc
from imaged.oci import mediatypes as mt
from imaged.oci.digest import digest_like, hash_digest, is_digest, validate_digest
from imaged.oci.manifest import Descriptor, Index, media_type_of, parse_index
from imaged.registry.auth import Credentials, redact_url
from imaged.registry.config import RegistriesConfig
from imaged.registry.hosts import Endpoint
from imaged.registry.http import MAX_ERROR_BODY, Response, TooLarge, Transient, content_type, read_capped
from imaged.registry.reference import Reference
from imaged.registry.transport import Pool, Retries, Route, Transport

log = logging.getLogger(__name__)

MAX_PAGES = 20
# Referrers kept from one listing (signature discovery looks at far fewer).
MAX_REFERRERS = 1024
MAX_TAGS = 100_000
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)", re.ASCII)


class FetchedManifest(NamedTuple):
    """A manifest or index as a registry served it (a tuple: callers may unpack it)."""

    body: bytes
    media_type: str
    digest: str


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


class RegistryClient:
    """Talks to OCI registries as configured by the `registries` section. Use as `async with`."""

    def __init__(self, config: RegistriesConfig, *, user_agent: str = "imaged/0.1") -> None:
        self._http = Transport(Pool(config, user_agent))
        self._owner = True

    # -- lifecycle ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool (views: nothing to do; the parent owns the pool)."""
        if self._owner:
            await self._http.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def config(self) -> RegistriesConfig:
        return self._http.config

    def with_credentials(self, host: str, username: str, password: str) -> RegistryClient:
        """A view that uses these credentials for `host` (as in references: `docker.io`, `ghcr.io`).

        Shares the connection pool; the parent is unchanged. Tokens are cached per credentials, so
        the view never uses tokens obtained with other credentials for that host, nor the reverse.
        """
        return self.with_auth(host, Credentials(username, password))

    def with_auth(self, host: str, creds: Credentials) -> RegistryClient:
        """`with_credentials` for any kind of credentials (identity or registry token too)."""
        view = RegistryClient.__new__(RegistryClient)
        view._http = self._http.with_auth(host, creds)
        view._owner = False
        return view

    def request_credentials_only(self) -> RegistryClient:
        """A view that authenticates only with credentials given by `with_credentials` (those a
        request sent), never with the configured ones: for callers who may not borrow the node's
        registry access (the read-only socket)."""
        view = RegistryClient.__new__(RegistryClient)
        view._http = self._http.request_credentials_only()
        view._owner = False
        return view

    # -- manifests --------------------------------------------------------------------------------

    async def resolve(self, ref: Reference, *, attempts: int | None = None) -> Descriptor:
        """The descriptor (media type, digest, size) of the manifest or index `ref` names.
        `attempts`: tries per request (a caller with something to fall back on asks once)."""
        what = f"resolving {ref}"
        capability = "pull" if ref.digest else "resolve"
        accept = mt.ACCEPT_MANIFESTS
        max_size = self.config.max_manifest_size

        async def op(route: Route) -> Descriptor:
            e = route.endpoint
            url = e.url(f"/{ref.path}/manifests/{ref.object}")
            r = await self._http.roundtrip(route, "HEAD", url, accept=accept, max_size=0)
            if r.status == 200:
                media_type = content_type(r.headers)
                if media_type in mt.SCHEMA1:
                    raise _schema1(e)
                digest = r.headers.get("Docker-Content-Digest", "")
                size = r.headers.get("Content-Length", "")
                if (
                    is_digest(digest)
                    and (not ref.digest or digest == ref.digest)
                    and size.isdigit()
                    and media_type in (mt.INDEXES | mt.MANIFESTS)
                ):
                    if int(size) > max_size:
                        raise ResourceExhausted(
                            f"manifest on {e.host} is {size} bytes, over the limit of {max_size}"
                        )
                    return Descriptor(media_type, digest, int(size))
            elif r.status not in (405, 400, 501):
                raise self._http.status_error(r, route, f"image {ref}")
            # No usable answer to HEAD: GET the manifest and hash it.
            m = await self._get_manifest_on(route, ref.object, accept, max_size)
            return Descriptor(m.media_type, m.digest, len(m.body))

        return await self._http.on_endpoints(ref, capability, what, op, attempts=attempts)

    async def get_manifest(
        self,
        ref: Reference,
        obj: str,
        *,
        accept: str = mt.ACCEPT_MANIFESTS,
        max_size: int | None = None,
        fallback_tag: str | None = None,
    ) -> FetchedManifest:
        """Manifest `obj` (a digest or a tag) of `ref`'s repository.

        A digest `obj` is verified (DataLoss on mismatch). With `fallback_tag`, a digest that is not
        found is fetched by that tag instead, and must still hash to `obj` (some registries serve
        signature manifests only by tag).
        """
        cap = max_size if max_size is not None else self.config.max_manifest_size
        what = f"fetching manifest {obj} of {ref.repository}"
        by_digest = is_digest(obj)
        if not by_digest and not re.fullmatch(r"[\w][\w.-]{0,127}", obj, re.ASCII):
            raise InvalidArgument(f"{what}: {obj!r} is neither a digest nor a tag")
        capability = "pull" if by_digest else "resolve"
        try:
            return await self._http.on_endpoints(
                ref, capability, what, lambda route: self._get_manifest_on(route, obj, accept, cap)
            )
        except NotFound:
            if not (by_digest and fallback_tag):
                raise
        tagged = await self.get_manifest(ref, fallback_tag, accept=accept, max_size=cap)
        actual = digest_like(tagged.body, obj)
        if actual != obj:
            raise DataLoss(
                f"{what}: {ref.domain} has no manifest {obj}, and tag {fallback_tag} serves {actual} instead"
            )
        return tagged._replace(digest=obj)

    async def _get_manifest_on(self, route: Route, obj: str, accept: str, max_size: int) -> FetchedManifest:
        e, ref = route.endpoint, route.ref
        url = e.url(f"/{ref.path}/manifests/{obj}")
        r = await self._http.roundtrip(route, "GET", url, accept=accept, max_size=max_size)
        if r.status != 200:
            shown = f"{ref.repository}@{obj}" if is_digest(obj) else f"{ref.repository}:{obj}"
            raise self._http.status_error(r, route, f"manifest {shown}")
        if is_digest(obj):
            actual = digest_like(r.body, obj)
            if actual != obj:
                raise DataLoss(f"{e.host} served a manifest with digest {actual} instead of {obj}")
            digest = obj
        else:
            digest = hash_digest("sha256", r.body)
        try:
            media_type = media_type_of(r.body, content_type(r.headers))
        except InvalidArgument as err:
            raise InvalidArgument(f"{e.host} served something that is not a manifest: {err.message}") from err
        if media_type in mt.SCHEMA1:
            raise _schema1(e)
        return FetchedManifest(r.body, media_type, digest)

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
        pos = offset
        routes = self._http.routes(ref, "pull", what)
        for i, route in enumerate(routes):
            e = route.endpoint
            retries = Retries(self._http, route)
            while True:
                try:
                    self._http.ready(e)
                    try:
                        async with contextlib.aclosing(self._blob_stream(route, desc, pos)) as stream:
                            async for chunk in stream:
                                pos += len(chunk)
                                retries.progressed()
                                yield chunk
                        if pos != desc.size:  # pragma: no cover - _blob_stream guarantees it
                            raise DataLoss(f"{e.host} ended the blob at byte {pos} of {desc.size}")
                        return
                    except ImagedError as err:
                        raise in_context(err, what) from err  # the one place it is added
                except Transient as err:
                    if await retries.again(err, f"{what} at byte {pos}"):
                        continue
                    if not route.fallback_left:
                        raise Unavailable(
                            f"{what}: {err.message} (after {retries.failures} attempt(s), "
                            f"at byte {pos} of {desc.size})"
                        ) from err
                    log.info(
                        "%s: mirror %s failed (%s); trying %s", what, e, err.message, routes[i + 1].endpoint
                    )
                    break
                except ImagedError as err:
                    if not route.fallback_left:
                        raise
                    log.info(
                        "%s: mirror %s failed (%s); trying %s", what, e, err.message, routes[i + 1].endpoint
                    )
                    break

    async def _blob_stream(self, route: Route, desc: Descriptor, pos: int) -> AsyncGenerator[bytes, None]:
        """One GET of the blob from `pos`; yields at most `desc.size - pos` bytes, exactly that or raises."""
        e, ref = route.endpoint, route.ref
        url = e.url(f"/{ref.path}/blobs/{desc.digest}")
        headers = {"Accept": "*/*"}
        if pos:
            headers["Range"] = f"bytes={pos}-"
        want = desc.size - pos
        async with self._http.open(route, "GET", url, headers) as resp:
            status = resp.status
            if status == 416:
                raise DataLoss(
                    f"{e.host} cannot serve bytes from {pos}: the blob is shorter than the "
                    f"{desc.size} bytes its descriptor says"
                )
            if status not in (200, 206):
                body = b""
                try:
                    async with asyncio.timeout(self.config.timeouts.request):
                        body = await read_capped(resp, MAX_ERROR_BODY)
                except (TooLarge, aiohttp.ClientError, TimeoutError):
                    pass
                r = Response(status, resp.headers, body, str(resp.url))
                raise self._http.status_error(r, route, f"blob {desc.digest} of {ref.repository}")
            skip = 0
            if status == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if m is None:
                    raise DataLoss(f"{e.host} sent a partial answer without a valid Content-Range")
                start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
                if start > pos or (total != "*" and int(total) != desc.size):
                    raise DataLoss(
                        f"{e.host} sent bytes {start}-{end}/{total}, expected {pos}- of {desc.size}"
                    )
                skip = pos - start
                expected_length = end - start + 1
            else:
                skip = pos  # Range ignored: the whole blob comes again
                expected_length = desc.size
            if resp.content_length is not None and resp.content_length != expected_length:
                raise DataLoss(
                    f"{e.host} announced {resp.content_length} bytes, expected {expected_length} "
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
                        raise DataLoss(f"{e.host} sent more than the {desc.size} bytes the descriptor says")
                    sent += len(chunk)
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as err:
                raise Transient(f"download from {e.host} broke: {type(err).__name__}: {err}") from None
            if sent != want:
                if resp.content_length is None:
                    # No length announced: a closed connection looks like a normal end; retry.
                    raise Transient(f"{e.host} ended the download early ({pos + sent} of {desc.size} bytes)")
                raise DataLoss(f"{e.host} sent {pos + sent} of {desc.size} bytes")

    async def get_blob(self, ref: Reference, digest: str, *, max_size: int) -> bytes:
        """A small blob (a config, a signature payload), verified against `digest`."""
        validate_digest(digest)
        what = f"fetching blob {digest} of {ref.repository}"

        async def op(route: Route) -> bytes:
            e = route.endpoint
            url = e.url(f"/{ref.path}/blobs/{digest}")
            r = await self._http.roundtrip(route, "GET", url, accept="*/*", max_size=max_size)
            if r.status != 200:
                raise self._http.status_error(r, route, f"blob {digest} of {ref.repository}")
            actual = digest_like(r.body, digest)
            if actual != digest:
                raise DataLoss(f"{e.host} served content with digest {actual} instead of {digest}")
            return r.body

        return await self._http.on_endpoints(ref, "pull", what, op)

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

        async def op(route: Route) -> Index | None:
            e = route.endpoint

            def no_api(why: str) -> Index | None:
                # A mirror without the API (a pull-through cache) says nothing of the upstream's.
                nonlocal mirror_without_api
                if route.fallback_left:
                    mirror_without_api = True
                    raise NotFound(f"{e.host} has no referrers API ({why})")
                return None

            url = e.url(f"/{ref.path}/referrers/{digest}")
            if artifact_type:
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"artifactType": artifact_type})
            manifests: list[Descriptor] = []
            first: Index | None = None
            for _ in range(MAX_PAGES):
                r = await self._http.roundtrip(route, "GET", url, accept=mt.OCI_INDEX, max_size=max_size)
                if r.status in (404, 400, 405, 406, 501):
                    if first is None:
                        return no_api(f"HTTP {r.status}")
                    break
                if r.status != 200:
                    raise self._http.status_error(r, route, f"referrers of {digest}")
                if content_type(r.headers) not in (mt.OCI_INDEX, "application/json", ""):
                    return no_api(f"answered {content_type(r.headers)}")
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
            return await self._http.on_endpoints(ref, "pull", what, op)
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

        async def op(route: Route) -> list[str]:
            e = route.endpoint
            url = e.url(f"/{ref.path}/tags/list")
            url += ("&" if "?" in url else "?") + f"n={min(limit, 1000)}"
            tags: list[str] = []
            for _ in range(MAX_PAGES * 50):
                r = await self._http.roundtrip(
                    route, "GET", url, accept="application/json", max_size=8 * 1024 * 1024
                )
                if r.status != 200:
                    raise self._http.status_error(r, route, f"repository {ref.repository}")
                try:
                    doc = jsondoc.loads(r.body)
                except (ValueError, UnicodeDecodeError):
                    raise InvalidArgument(f"{e.host} sent a tag list that is not JSON") from None
                page = doc.get("tags") if isinstance(doc, dict) else None
                if page is None:
                    page = []
                if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                    raise InvalidArgument(f"{e.host} sent a malformed tag list")
                tags.extend(page)
                if len(tags) >= limit:
                    return tags[:limit]
                nxt = _next_link(r.headers, r.url)
                if nxt is None or not page:
                    break
                url = nxt
            return tags

        return await self._http.on_endpoints(ref, "resolve", what, op)


def _schema1(e: Endpoint) -> InvalidArgument:
    return InvalidArgument(
        f"{e.host} serves a Docker schema 1 manifest, which is deprecated and not supported; "
        "push the image again with a current tool"
    )
