"""Small hostile registries: an aiohttp app per test, served from its own thread and event loop
(the test itself blocks in synchronous gRPC calls to the daemon while the server misbehaves)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.archives import OCI_CONFIG, OCI_MANIFEST, sha

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def compact(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HostileRegistry:
    handler: Handler
    seen: list[Seen] = field(default_factory=list)
    sent: list[int] = field(default_factory=lambda: [0])  # body bytes written by streaming handlers

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-registry", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    async def _start(self) -> int:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.seen.append(Seen(request.method, request.path_qs, dict(request.headers)))
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", wrapped)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    def count(self, needle: str, method: str | None = None) -> int:
        return sum(1 for s in list(self.seen) if needle in s.path and (method is None or s.method == method))

    def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> HostileRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def small_image() -> tuple[bytes, bytes]:
    """(manifest, config) of a one-layer OCI image whose blobs nobody will be asked for."""
    config = compact({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    manifest = compact(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [],
        }
    )
    return manifest, config


def manifest_response(request: web.Request, body: bytes, media_type: str = OCI_MANIFEST) -> web.Response:
    headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(body)}
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return web.Response(headers=headers)
    return web.Response(body=body, headers=headers)
