"""Hostile registries behind Pull and Verify: endless or trickling manifests, huge Content-Lengths,
redirect loops, token servers that never answer, signature tags with thousands of layers. Each ends
in a clear error (or verdict) naming the registry, within a bounded time, and the daemon's memory
stays bounded (its peak RSS, VmHWM, is read from /proc after each case).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from aiohttp import web

from imaged.pb.machine import image_pb2
from imaged.verify.material import SIMPLE_SIGNING_MEDIA_TYPE as SIMPLE_SIGNING
from tests.reliability.hostile import HostileRegistry, compact, manifest_response, small_image
from tests.reliability.hygiene import rss_kib
from tests.support.archives import OCI_INDEX, OCI_MANIFEST, sha
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.sigstore import StaticKey

MEMORY_BUDGET_KIB = 96 * 1024  # growth of the daemon's peak RSS allowed per hostile case
TIMEOUTS = {"connect": 2, "read": 2, "request": 3}


@pytest.fixture(scope="module")
def daemon(containerd: PrivateContainerd) -> Iterator[DaemonProcess]:
    key = StaticKey.ecdsa(label="hostile").public_pem.decode()
    d = DaemonProcess(
        containerd.socket,
        {
            "registries": {
                "retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1},
                "timeouts": TIMEOUTS,
            },
            "verification": {"rules": [{"image": "127.0.0.1:*/sig/*", "publicKey": {"certificate": key}}]},
        },
    )
    d.start()
    yield d
    d.stop()


class Bounded:
    """Runs one hostile case: the call's status, how long it took, how much the peak RSS grew."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d

    def pull(self, ref: str, timeout: float = 60) -> tuple[grpc.StatusCode, str, float, int]:
        req = image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref)
        return self._run(lambda: list(self.d.images.Pull(req, timeout=timeout)))

    def verify(self, ref: str, timeout: float = 60) -> tuple[grpc.StatusCode, str, float, int]:
        req = image_pb2.ImageServiceVerifyRequest(image_ref=ref)
        return self._run(lambda: self.d.images.Verify(req, timeout=timeout))

    def _run(self, call) -> tuple[grpc.StatusCode, str, float, int]:  # type: ignore[no-untyped-def]
        assert self.d.proc is not None
        _, peak0 = rss_kib(self.d.proc.pid)
        start = time.monotonic()
        try:
            result = call()
            code, details = grpc.StatusCode.OK, str(result)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        elapsed = time.monotonic() - start
        _, peak1 = rss_kib(self.d.proc.pid)
        assert peak1 - peak0 < MEMORY_BUDGET_KIB, f"peak RSS grew by {(peak1 - peak0) // 1024} MiB"
        assert code not in (
            grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), (
            code,
            details,
        )
        return code, details, elapsed, peak1 - peak0


@pytest.fixture
def bounded(daemon: DaemonProcess) -> Bounded:
    return Bounded(daemon)


async def _endless(
    request: web.Request, chunk: bytes, sent: list[int], pause: float = 0.0
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": OCI_MANIFEST})
    await resp.prepare(request)
    try:
        while sent[0] < 1 << 30:
            await resp.write(chunk)
            sent[0] += len(chunk)
            if pause:
                await asyncio.sleep(pause)
    except (ConnectionError, RuntimeError):
        pass
    return resp


def test_endless_manifest(bounded: Bounded) -> None:
    sent = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        return await _endless(request, b" " * 65536, sent)

    with HostileRegistry(handler) as reg:
        code, details, elapsed, _ = bounded.pull(f"{reg.host}/x/endless:v1")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert reg.host in details and "4194304" in details
    assert elapsed < 15 and sent[0] < 64 << 20


def test_trickling_manifest_is_bounded_in_time(bounded: Bounded) -> None:
    """One byte every half second never trips the idle (read) timeout; the request timeout ends it."""
    sent = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        return await _endless(request, b" ", sent, pause=0.5)

    with HostileRegistry(handler) as reg:
        code, details, elapsed, _ = bounded.pull(f"{reg.host}/x/trickle:v1", timeout=120)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert reg.host in details and "timed out" in details
    assert elapsed < 2 * TIMEOUTS["request"] + 5


def test_huge_content_lengths(bounded: Bounded) -> None:
    manifest, _ = small_image()
    layer = b"layer bytes"
    config = compact(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}
    )
    image = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path
        if "/head-huge/manifests/" in path:  # HEAD announces a petabyte manifest
            return web.Response(
                headers={
                    "Content-Type": OCI_MANIFEST,
                    "Docker-Content-Digest": sha(manifest),
                    "Content-Length": str(10**15),
                }
            )
        if "/get-huge/manifests/" in path:  # no HEAD; the GET announces a terabyte and stalls
            if request.method == "HEAD":
                return web.Response(status=405)
            resp = web.StreamResponse(headers={"Content-Type": OCI_MANIFEST})
            resp.content_length = 10**12
            await resp.prepare(request)
            await resp.write(b"{")
            await asyncio.sleep(60)
            return resp
        if "/blob-huge/manifests/" in path:
            return manifest_response(request, image)
        if path.endswith(sha(config)):
            return web.Response(body=config)
        if path.endswith(sha(layer)):  # the layer's answer announces far more than its descriptor
            resp = web.StreamResponse()
            resp.content_length = 10**12
            await resp.prepare(request)
            await resp.write(layer)
            await asyncio.sleep(60)
            return resp
        return web.Response(status=404)

    with HostileRegistry(handler) as reg:
        for repo, want in (
            ("head-huge", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("get-huge", grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("blob-huge", grpc.StatusCode.DATA_LOSS),
        ):
            code, details, elapsed, _ = bounded.pull(f"{reg.host}/x/{repo}:v1")
            assert code == want, (repo, details)
            assert reg.host in details and elapsed < 10, (repo, details, elapsed)


def test_redirect_loops(bounded: Bounded) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        target = request.path + ("b" if len(request.path) % 2 else "")  # a growing chain and a loop
        if "/loop/" in request.path:
            target = request.path
        raise web.HTTPFound(target)

    with HostileRegistry(handler) as reg:
        for repo in ("loop", "chain"):
            code, details, elapsed, _ = bounded.pull(f"{reg.host}/x/{repo}:v1")
            assert code == grpc.StatusCode.UNAVAILABLE, details
            assert reg.host in details and "redirect" in details
            assert elapsed < 10
        assert len(reg.seen) <= 2 * 2 * 12, "redirects followed without bound"


def test_malformed_redirects_and_token_lifetimes(bounded: Bounded) -> None:
    # A Location no URL parser accepts was once an INTERNAL error; odd expires_in values (400
    # digits, negative) overflowed or were kept: the registry is at fault, so UNAVAILABLE or a token
    # with the default lifetime.
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            body = b'{"token": "t", "expires_in": 1' + b"0" * 400 + b"}"
            if "negative" in request.query.get("scope", ""):
                body = b'{"token": "t", "expires_in": -5}'
            return web.Response(body=body, content_type="application/json")
        if "/ipv6/" in request.path:
            return web.Response(status=307, headers={"Location": "https://[::1/x"})
        if "/port/" in request.path:
            return web.Response(status=307, headers={"Location": "http://127.0.0.1:99999/x"})
        if request.headers.get("Authorization") != "Bearer t":
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="s"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return web.Response(status=404, text="no such image")

    with HostileRegistry(handler) as reg:
        for repo in ("ipv6", "port"):
            code, details, _, _ = bounded.pull(f"{reg.host}/x/{repo}:v1")
            assert code == grpc.StatusCode.UNAVAILABLE, details
            assert reg.host in details and "redirected to a malformed URL" in details
        for repo in ("huge", "negative"):
            code, details, _, _ = bounded.pull(f"{reg.host}/{repo}/app:v1")
            assert code == grpc.StatusCode.NOT_FOUND, details  # the token worked; the image is absent


def test_token_that_never_comes(bounded: Bounded) -> None:
    sent = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/token-stall"):
            await asyncio.sleep(120)
            return web.Response(status=500)
        if request.path.startswith("/token-trickle"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            try:
                await resp.write(b'{"token": "')
                while True:
                    await resp.write(b"a")
                    sent[0] += 1
                    await asyncio.sleep(0.5)
            except (ConnectionError, RuntimeError):
                return resp
        realm = "token-stall" if "/stall/" in request.path else "token-trickle"
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="http://{request.host}/{realm}",service="hostile"'},
        )

    with HostileRegistry(handler) as reg:
        for repo in ("stall", "trickle"):
            code, details, elapsed, _ = bounded.pull(f"{reg.host}/x/{repo}:v1", timeout=120)
            assert code == grpc.StatusCode.UNAVAILABLE, (repo, details)
            assert "token server" in details and reg.host in details, details
            assert elapsed < 3 * TIMEOUTS["request"], (repo, elapsed)


def test_signature_tag_with_thousands_of_layers(bounded: Bounded) -> None:
    manifest, _ = small_image()
    digest = sha(manifest)
    hexd = digest.split(":", 1)[1]
    layers = [
        {
            "mediaType": SIMPLE_SIGNING,
            "digest": sha(f"sig {i}".encode()),
            "size": 200,
            "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
        }
        for i in range(5000)
    ]
    sig_manifest = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(b"{}"),
                "size": 2,
            },
            "layers": layers,
        }
    )
    referrers = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha(f"ref {i}".encode()),
                    "size": 500,
                    "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                }
                for i in range(10000)
            ],
        }
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.endswith("/manifests/v1") or path.endswith(f"/manifests/{digest}"):
            return manifest_response(request, manifest)
        if path.endswith(f"/manifests/sha256-{hexd}.sig"):
            return manifest_response(request, sig_manifest)
        if path.endswith(f"/manifests/sha256-{hexd}"):
            return manifest_response(request, referrers, OCI_INDEX)
        return web.Response(status=404)  # no referrers API, no signature blob: each noted and skipped

    with HostileRegistry(handler) as reg:
        code, details, elapsed, _ = bounded.verify(f"{reg.host}/sig/app:v1")
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert reg.host.split(":")[0] in details
    fetched = reg.count("/blobs/") + reg.count("/manifests/sha256:")
    assert fetched <= 2 * (32 + 32), f"{fetched} signature objects fetched"
    assert elapsed < 20, elapsed
