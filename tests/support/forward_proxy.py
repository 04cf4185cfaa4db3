"""A minimal HTTP forward proxy (absolute-form requests, no CONNECT) for tests of proxy support.

Host names in `names` are resolved by the proxy alone (to loopback ports), so a pull of
`registry.proxy-test:<port>/...` can only succeed through the proxy. Each connection's first
request line and Proxy-Authorization header are recorded; after that request the connection is
piped both ways to its target (later requests on it go to the same host).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from dataclasses import dataclass, field

from tests.support.registry import free_port


@dataclass
class Seen:
    request_line: str
    proxy_authorization: str


@dataclass
class ForwardProxy:
    names: dict[str, tuple[str, int]]
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [ln for ln in lines[1:] if ln]
        auth = next(
            (ln.split(":", 1)[1].strip() for ln in headers if ln.lower().startswith("proxy-authorization:")),
            "",
        )
        self.seen.append(Seen(lines[0], auth))
        url = urllib.parse.urlsplit(target)
        upstream = self.names.get(url.netloc)
        if upstream is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        origin = url.path + (f"?{url.query}" if url.query else "")
        kept = [
            ln for ln in headers if not ln.lower().startswith(("proxy-authorization:", "proxy-connection:"))
        ]
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        up_writer.write(
            f"{method} {origin} {version}\r\n".encode() + "\r\n".join(kept).encode() + b"\r\n\r\n"
        )

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
