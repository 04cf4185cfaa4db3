"""A fault-injecting HTTP proxy in front of a real registry, for pulls through the daemon.

The proxy *is* the registry as far as the daemon knows: image references name the proxy's
`127.0.0.1:PORT`, and every request is forwarded to the real `docker-registry` behind it, unless
a configured `Fault` matches. Faults act where real networks and registries fail::

    proxy = FaultProxy(registry.host, rate=32 << 20)    # optional bandwidth cap, bytes/s
    proxy.add(Fault("reset", path=blob_path(digest), after=1 << 20, times=2))
    proxy.add(Fault("status", path="/manifests/", status=500, times=3))
    ... pull f"{proxy.host}/repo:tag" ...
    proxy.log                                              # what was asked and what was done

Actions: `status` (answer `status` without asking upstream, with Retry-After if given), `reset`
(send `after` body bytes then a TCP RST), `truncate` (send `after` bytes of a body whose full
Content-Length was announced, then close cleanly), `stall` (send `after` bytes, or nothing at all
with `after=-1`, then go silent for `seconds`), `corrupt` (flip the body byte at offset `after`:
same length, wrong bytes), `redirect` (307 to `location` + the request's path and query).
`times` is how many matching requests get the fault (-1: all).

Each answer carries `Connection: close` (one request per connection), which keeps the proxy
simple and costs nothing that matters on loopback. It runs its own event loop in a thread so
that synchronous gRPC calls in the test can block while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

Action = Literal["status", "reset", "truncate", "stall", "corrupt", "redirect"]
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


def blob_path(digest: str) -> str:
    """A `path` pattern for one blob (any repository)."""
    return f"/blobs/{re.escape(digest)}$"


@dataclass
class Fault:
    action: Action
    path: str = ""  # regex searched in the request path (without query)
    method: str | None = None  # None: any
    times: int = 1  # matching requests that get it; -1: all
    after: int = 0  # body bytes passed through before acting (corrupt: offset of the flipped byte)
    status: int = 500
    retry_after: str | None = None
    seconds: float = 3600.0  # stall duration
    location: str = ""  # redirect: the base URL the request's path is sent to (307)
    only_from_start: bool = False  # only requests without a Range header (first attempts)
    hits: int = 0

    def wants(self, method: str, path: str, has_range: bool) -> bool:
        if self.times >= 0 and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.only_from_start and has_range:
            return False
        return re.search(self.path, path) is not None


@dataclass
class Entry:
    """One request the proxy saw: what it forwarded or did instead."""

    method: str
    path: str
    range: str | None
    action: str = "forward"
    status: int = 0
    body_bytes: int = 0
    at: float = field(default_factory=time.monotonic)

    @property
    def range_start(self) -> int | None:
        m = re.match(r"bytes=(\d+)-", self.range or "")
        return int(m.group(1)) if m else None


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float | None = None) -> None:
        """`upstream`: `host:port` of a plain-HTTP registry. `rate`: body bytes/s per response."""
        self.upstream = upstream
        self.rate = rate
        self.faults: list[Fault] = []
        self.log: list[Entry] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- configuration ----------------------------------------------------------------------------

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def entries(self, path: str = "", method: str | None = None) -> list[Entry]:
        with self._lock:
            log = list(self.log)
        return [e for e in log if re.search(path, e.path) and (method is None or e.method == method)]

    def _pick(self, method: str, path: str, has_range: bool) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.wants(method, path, has_range):
                    f.hits += 1
                    return f
        return None

    # -- lifecycle --------------------------------------------------------------------------------

    async def _start(self) -> int:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
            connector=aiohttp.TCPConnector(limit=256, force_close=True),
        )
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=1 << 16)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(BaseException):
                await t
        if self._session is not None:
            await self._session.close()

    def close(self) -> None:
        if not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, aiohttp.ClientError):
            pass
        except asyncio.CancelledError:  # closing the proxy ends stalled answers
            pass
        finally:
            self._conns.discard(task)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        if first == b"\x16":
            # A TLS handshake (containerd 2.x tries HTTPS first on 127.0.0.1): answered as the
            # registry behind (Go's net/http) answers it, so the client goes on in plain HTTP at
            # once instead of waiting for its handshake timeout.
            writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
            await writer.drain()
            return
        head = first + await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        lower = {k.lower(): v for k, v in headers}
        body = b""
        if int(lower.get("content-length", "0") or 0):
            body = await reader.readexactly(int(lower["content-length"]))
        path = target.split("?", 1)[0]
        entry = Entry(method, path, lower.get("range"))
        with self._lock:
            self.log.append(entry)
        fault = self._pick(method, path, "range" in lower)

        if fault is not None and fault.action == "status":
            entry.action, entry.status = f"status {fault.status}", fault.status
            payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
            extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after else ""
            writer.write(
                f"HTTP/1.1 {fault.status} Injected\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + (payload if method != "HEAD" else b"")
            )
            await writer.drain()
            return
        if fault is not None and fault.action == "redirect":
            entry.action, entry.status = f"redirect to {fault.location}", 307
            writer.write(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {fault.location}{target}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            return
        if fault is not None and fault.action == "stall" and fault.after < 0:
            entry.action = "stall before answering"
            await asyncio.sleep(fault.seconds)
            return

        assert self._session is not None
        forward = [(k, v) for k, v in headers if k.lower() not in _HOP and k.lower() != "content-length"]
        async with self._session.request(
            method,
            f"http://{self.upstream}{target}",
            headers=forward,
            data=body or None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        ) as resp:
            entry.status = resp.status
            out = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in resp.raw_headers
                if k.decode("latin-1").lower() not in _HOP
            ]
            length = resp.headers.get("Content-Length")
            data: bytes | None = None
            if length is None and method != "HEAD":
                data = await resp.read()  # chunked upstream (small JSON answers): re-frame it
                out.append(("Content-Length", str(len(data))))
            status_line = f"HTTP/1.1 {resp.status} {resp.reason or 'X'}\r\n"
            writer.write(
                (status_line + "".join(f"{k}: {v}\r\n" for k, v in out) + "Connection: close\r\n\r\n").encode(
                    "latin-1"
                )
            )
            if method == "HEAD":
                await writer.drain()
                return
            chunks = _once(data) if data is not None else resp.content.iter_chunked(64 * 1024)
            await self._body(chunks, writer, fault, entry)

    async def _body(self, chunks, writer: asyncio.StreamWriter, fault: Fault | None, entry: Entry) -> None:  # type: ignore[no-untyped-def]
        sent = 0
        started = time.monotonic()
        act = fault.action if fault is not None else None
        cut = fault.after if fault is not None else -1
        async for chunk in chunks:
            if act in ("reset", "truncate", "stall") and sent + len(chunk) >= cut:
                head = chunk[: cut - sent]
                writer.write(head)
                await writer.drain()
                entry.body_bytes = sent + len(head)
                entry.action = f"{act} at {entry.body_bytes}"
                if act == "reset":
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                elif act == "stall":
                    assert fault is not None
                    await asyncio.sleep(fault.seconds)
                return
            if act == "corrupt" and sent <= cut < sent + len(chunk):
                b = bytearray(chunk)
                b[cut - sent] ^= 0xFF
                chunk = bytes(b)
                entry.action = f"corrupt byte {cut}"
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            entry.body_bytes = sent
            if self.rate:
                ahead = sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data
