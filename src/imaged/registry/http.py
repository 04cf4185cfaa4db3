"""HTTP answers of a registry: the bounded response, capped body reads, retryable failures, proxies."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from imaged.registry.proxy import ProxyRules

CHUNK = 64 * 1024
MAX_ERROR_BODY = 64 * 1024


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


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    v = headers.get("Retry-After", "")
    try:
        return max(0.0, float(v)) if v else None
    except ValueError:
        return None


def shown(text: str) -> str:
    """A server's error text as it may appear in our messages: printable, at most 200 characters."""
    return "".join(c for c in text if c.isprintable())[:200]


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


def proxy_args(proxies: ProxyRules, url: str, headers: MutableMapping[str, str]) -> dict[str, Any]:
    """aiohttp's proxy arguments for `url` (none when it is reached directly). Plain http is
    proxied per request, so the proxy's credentials join `headers`; https uses CONNECT."""
    proxy = proxies.for_url(url)
    if proxy is None:
        return {}
    if url.startswith("http:"):
        headers.update(proxy.headers)
    return {"proxy": proxy.url, "proxy_headers": proxy.headers}
