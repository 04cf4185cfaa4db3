"""RegistryClient against small hostile or broken registries (aiohttp servers written per test).

These are not stand-ins for docker-registry (test_client.py uses the real one): they misbehave on
purpose, in ways a real registry, mirror or man in the middle can: wrong bytes, lying lengths,
ignored ranges, dropped connections, redirects to other hosts, transient errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from imaged.errors import DataLoss, InvalidArgument, ResourceExhausted, Unauthenticated
from imaged.oci import mediatypes as mt
from imaged.oci.manifest import Descriptor
from imaged.registry.client import RegistryClient
from imaged.registry.reference import parse
from tests.registry.conftest import make_config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    host: str
    seen: list[web.Request] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, *, bind: str = "127.0.0.1") -> Server:
        server = Server("")

        async def wrapped(request: web.Request) -> web.StreamResponse:
            server.seen.append(request)
            server.headers.append(dict(request.headers))
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", wrapped)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, bind, 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.host = f"{bind}:{port}"
        return server

    yield start
    for r in runners:
        await r.cleanup()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [],
    }
).encode()
BLOB = bytes(range(256)) * 4096  # 1 MiB


async def test_manifest_by_digest_with_wrong_bytes_is_data_loss(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    other = MANIFEST.replace(b'"layers": []', b'"layers": [], "annotations": {"x": "y"}')

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=other, headers={"Content-Type": mt.OCI_MANIFEST})

    srv = await serve(handler)
    want = _digest(MANIFEST)
    async with RegistryClient(make_config()) as c:
        with pytest.raises(DataLoss) as e:
            await c.get_manifest(parse(f"{srv.host}/x/y:v1"), want)
        assert want in e.value.message and srv.host in e.value.message
        # resolve by digest: HEAD claims another digest, GET proves it wrong.
        with pytest.raises(DataLoss):
            await c.resolve(parse(f"{srv.host}/x/y@{want}"))


async def test_resolve_without_digest_header_hashes_the_body(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        return web.Response(body=MANIFEST, headers={"Content-Type": "application/json"})

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        desc = await c.resolve(parse(f"{srv.host}/x/y:v1"))
    assert desc == Descriptor(mt.OCI_MANIFEST, _digest(MANIFEST), len(MANIFEST))
    assert [r.method for r in srv.seen] == ["HEAD", "GET"]
    assert srv.headers[0]["Accept"] == mt.ACCEPT_MANIFESTS


async def test_schema1_is_rejected_clearly(serve: Callable[..., Awaitable[Server]]) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x/y", "tag": "v1", "fsLayers": []}).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": mt.DOCKER_SCHEMA1_SIGNED, "Docker-Content-Digest": _digest(body)}
        return web.Response(body=body if request.method == "GET" else None, headers=headers)

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        with pytest.raises(InvalidArgument) as e:
            await c.resolve(parse(f"{srv.host}/x/y:v1"))
        assert "schema 1" in e.value.message
        with pytest.raises(InvalidArgument):
            await c.get_manifest(parse(f"{srv.host}/x/y:v1"), "v1")


async def test_oversized_manifest_is_not_read_to_the_end(serve: Callable[..., Awaitable[Server]]) -> None:
    sent = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": mt.OCI_MANIFEST})  # chunked, no length
        await resp.prepare(request)
        try:
            for _ in range(4096):  # up to 256 MiB
                await resp.write(b" " * 65536)
                sent[0] += 65536
        except (ConnectionError, RuntimeError):
            pass
        return resp

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        with pytest.raises(ResourceExhausted) as e:
            await c.get_manifest(parse(f"{srv.host}/x/y:v1"), "v1", max_size=1 << 20)
    assert "1048576" in e.value.message
    assert sent[0] < 64 << 20


async def test_declared_oversize_manifest_refused_before_reading(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": mt.OCI_MANIFEST})

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        with pytest.raises(ResourceExhausted):
            await c.get_manifest(parse(f"{srv.host}/x/y:v1"), "v1", max_size=1 << 20)


def _blob_desc(data: bytes = BLOB) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_GZIP, _digest(data), len(data))


async def _fetch(c: RegistryClient, host: str, desc: Descriptor, offset: int = 0) -> bytes:
    return b"".join([chunk async for chunk in c.fetch_blob(parse(f"{host}/x/y:v1"), desc, offset=offset)])


async def test_blob_range_ignored_by_server(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB)  # 200 with the whole blob whatever the Range says

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        assert await _fetch(c, srv.host, _blob_desc(), offset=300_001) == BLOB[300_001:]
    assert srv.headers[0]["Range"] == "bytes=300001-"


async def test_blob_more_bytes_than_descriptor_is_data_loss(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to check up front
        await resp.prepare(request)
        await resp.write(BLOB + b"extra")
        await resp.write_eof()
        return resp

    srv = await serve(handler)
    got: list[bytes] = []
    async with RegistryClient(make_config()) as c:
        with pytest.raises(DataLoss) as e:
            async for chunk in c.fetch_blob(parse(f"{srv.host}/x/y:v1"), _blob_desc()):
                got.append(chunk)
    assert "more than" in e.value.message
    assert sum(map(len, got)) <= len(BLOB)


async def test_blob_shorter_than_descriptor_is_data_loss(serve: Callable[..., Awaitable[Server]]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB[:-10])

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        with pytest.raises(DataLoss) as e:
            await _fetch(c, srv.host, _blob_desc())
    assert srv.host in e.value.message and _blob_desc().digest in e.value.message


async def test_blob_download_resumes_after_a_broken_connection(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    calls = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        calls[0] += 1
        if calls[0] == 1:
            resp = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
            await resp.prepare(request)
            await resp.write(BLOB[:400_000])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return web.Response(
            status=206,
            body=BLOB[start:],
            headers={"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"},
        )

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        assert await _fetch(c, srv.host, _blob_desc()) == BLOB
    assert calls[0] == 2
    resumed_from = int(srv.headers[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 400_000


async def test_transient_errors_are_retried(serve: Callable[..., Awaitable[Server]]) -> None:
    statuses = [503, 429, 200]

    async def handler(request: web.Request) -> web.StreamResponse:
        status = statuses.pop(0)
        if status != 200:
            return web.Response(status=status, headers={"Retry-After": "0"})
        return web.Response(body=BLOB)

    srv = await serve(handler)
    async with RegistryClient(make_config()) as c:
        assert await _fetch(c, srv.host, _blob_desc()) == BLOB
    assert len(srv.seen) == 3


async def test_redirect_to_other_host_drops_authorization(serve: Callable[..., Awaitable[Server]]) -> None:
    async def storage(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB)

    cdn = await serve(storage, bind="127.0.0.2")
    expected = "Basic " + base64.b64encode(b"u:p4ss").decode()

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        raise web.HTTPTemporaryRedirect(f"http://{cdn.host}/blobs/data?sig=abc")

    reg = await serve(registry)
    cfg = make_config(hosts={reg.host: {"auth": {"username": "u", "password": "p4ss"}}})
    async with RegistryClient(cfg) as c:
        assert await _fetch(c, reg.host, _blob_desc()) == BLOB
    assert reg.headers[-1].get("Authorization") == expected
    assert len(cdn.headers) == 1 and "Authorization" not in cdn.headers[0]
    assert cdn.seen[0].path_qs == "/blobs/data?sig=abc"


async def test_secrets_never_logged(
    serve: Callable[..., Awaitable[Server]], caplog: pytest.LogCaptureFixture
) -> None:
    token = "SECRET-TOKEN-0123456789"

    async def token_server(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": token, "expires_in": 300})

    tokens = await serve(token_server)

    async def registry(request: web.Request) -> web.StreamResponse:
        challenge = f'Bearer realm="http://{tokens.host}/token",service="svc",scope="repository:x/y:pull"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    reg = await serve(registry)
    password = "hunter2-do-not-log"
    cfg = make_config(hosts={reg.host: {"auth": {"username": "bob", "password": password}}})
    caplog.set_level(logging.DEBUG)
    async with RegistryClient(cfg) as c:
        with pytest.raises(Unauthenticated) as e:
            await c.resolve(parse(f"{reg.host}/x/y:v1"))
    b64 = base64.b64encode(f"bob:{password}".encode()).decode()
    for text in (caplog.text, e.value.message, repr(e.value)):
        assert password not in text and b64 not in text and token not in text
    assert reg.host in e.value.message and "x/y" in e.value.message
    # The token server got the credentials; the registry got the token, twice at most (no loop).
    assert tokens.headers[0]["Authorization"] == f"Basic {b64}"
    assert reg.headers[-1]["Authorization"] == f"Bearer {token}"
    assert len(reg.seen) == 2


async def test_referrers_filtered_client_side(serve: Callable[..., Awaitable[Server]]) -> None:
    subject = _digest(b"subject")
    entries = [
        {"mediaType": mt.OCI_MANIFEST, "digest": _digest(b"a"), "size": 1, "artifactType": "application/x-a"},
        {"mediaType": mt.OCI_MANIFEST, "digest": _digest(b"b"), "size": 1, "artifactType": "application/x-b"},
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.endswith(f"/referrers/{subject}"):
            index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
            return web.Response(body=json.dumps(index).encode(), headers={"Content-Type": mt.OCI_INDEX})
        return web.Response(
            status=200, body=b"<html>not an index</html>", headers={"Content-Type": "text/html"}
        )

    srv = await serve(handler)
    ref = parse(f"{srv.host}/x/y:v1")
    async with RegistryClient(make_config()) as c:
        index = await c.referrers(ref, subject, artifact_type="application/x-b")
        assert index is not None and [m.digest for m in index.manifests] == [_digest(b"b")]
        assert srv.seen[0].query.get("artifactType") == "application/x-b"
        full = await c.referrers(ref, subject)
        assert full is not None and len(full.manifests) == 2
        assert await c.referrers(ref, _digest(b"other")) is None  # HTML answer: no referrers API


async def test_stalled_download_times_out_and_resumes(serve: Callable[..., Awaitable[Server]]) -> None:
    calls = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        calls[0] += 1
        if calls[0] == 1:
            resp = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
            await resp.prepare(request)
            await resp.write(BLOB[:200_000])
            await asyncio.sleep(2)  # stalls: the client's idle read timeout must fire first
            return resp
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"}
        return web.Response(status=206, body=BLOB[start:], headers=headers)

    srv = await serve(handler)
    cfg = make_config(timeouts={"connect": 2, "read": 0.3})
    started = time.monotonic()
    async with RegistryClient(cfg) as c:
        assert await _fetch(c, srv.host, _blob_desc()) == BLOB
    assert calls[0] == 2 and time.monotonic() - started < 1.8


async def test_failing_mirror_is_tried_once_then_upstream(serve: Callable[..., Awaitable[Server]]) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    async def upstream(request: web.Request) -> web.StreamResponse:
        return web.Response(body=BLOB)

    mirror = await serve(broken)
    up = await serve(upstream)
    cfg = make_config(hosts={up.host: {"mirrors": [f"http://{mirror.host}"]}})
    async with RegistryClient(cfg) as c:
        assert await _fetch(c, up.host, _blob_desc()) == BLOB
        assert await c.get_blob(parse(f"{up.host}/x/y:v1"), _blob_desc().digest, max_size=len(BLOB)) == BLOB
    assert len(mirror.seen) == 2  # one try per call, no retries before falling through
    assert all(r.query.get("ns") == up.host for r in mirror.seen)
    assert all("ns" not in r.query for r in up.seen)


async def test_identity_token_is_exchanged_by_oauth2_post(serve: Callable[..., Awaitable[Server]]) -> None:
    forms: list[dict[str, str]] = []

    async def token_server(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        forms.append({k: str(v) for k, v in (await request.post()).items()})
        return web.json_response({"access_token": "ACCESS", "expires_in": 300})

    tokens = await serve(token_server)

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer ACCESS":
            challenge = f'Bearer realm="http://{tokens.host}/token",service="svc"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return web.Response(body=BLOB)

    reg = await serve(registry)
    cfg = make_config(hosts={reg.host: {"auth": {"identity_token": "REFRESH"}}})
    async with RegistryClient(cfg) as c:
        assert await _fetch(c, reg.host, _blob_desc()) == BLOB
    assert forms == [
        {
            "grant_type": "refresh_token",
            "refresh_token": "REFRESH",
            "service": "svc",
            "scope": "repository:x/y:pull",
            "client_id": "imaged",
            "access_type": "offline",
        }
    ]
