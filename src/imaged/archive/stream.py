"""The archive's byte stream: compression detected from the first bytes, bounded decompression,
and a pull reader the tar parser reads exact byte counts from.

Chunks arrive in any size (1 byte to 4 MiB); nothing here holds more than one chunk plus one
decompressed piece, so a 1 GiB archive costs what a 1 MiB one does.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import zstandard

from imaged.errors import InvalidArgument

# Largest piece handed on from the decompressors (and the unit a blob is written to containerd in).
PIECE = 1024 * 1024
# zstd decompresses each input slice in one call; at most ~32768:1 (an RLE block), so a 512-byte
# slice yields at most ~16 MiB, whatever the archive holds.
_ZSTD_SLICE = 512

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_OTHER = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"PK\x03\x04": "zip",
}


def detect(head: bytes) -> str:
    """'gzip', 'zstd' or 'tar' (anything else is left to the tar parser to refuse)."""
    if head.startswith(_GZIP):
        return "gzip"
    if head.startswith(_ZSTD):
        return "zstd"
    for magic, kind in _OTHER.items():
        if head.startswith(magic):
            raise InvalidArgument(
                f"the archive is {kind}-compressed; only plain, gzip- and zstd-compressed tar archives "
                "can be imported"
            )
    return "tar"


async def _nonempty(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    async for chunk in chunks:
        if chunk:
            yield bytes(chunk)


async def _gunzip(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    d = zlib.decompressobj(wbits=31)
    async for chunk in chunks:
        data = chunk
        while True:
            if d.eof:
                # Another gzip member may follow (concatenated gzip); zero padding is skipped.
                data = data.lstrip(b"\0")
                if not data:
                    break
                d = zlib.decompressobj(wbits=31)
            try:
                out = d.decompress(data, PIECE)
            except zlib.error as e:
                raise InvalidArgument(f"the archive's gzip stream is corrupt: {e}") from None
            data = d.unused_data if d.eof else d.unconsumed_tail
            if out:
                yield out
            # A full piece may leave output pending inside zlib even with no input left.
            if not data and len(out) < PIECE:
                break
    if not d.eof:
        raise InvalidArgument("the archive's gzip stream is truncated (it ends inside a gzip member)")


async def _unzstd(chunks: AsyncIterator[bytes], max_window: int) -> AsyncGenerator[bytes, None]:
    dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
    d = dctx.decompressobj()
    buf: list[bytes] = []
    held = 0
    async for chunk in chunks:
        for i in range(0, len(chunk), _ZSTD_SLICE):
            data = chunk[i : i + _ZSTD_SLICE]
            while data:
                if d.eof:
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                    d = dctx.decompressobj()
                try:
                    out = d.decompress(data)
                except zstandard.ZstdError as e:
                    raise InvalidArgument(
                        f"the archive's zstd stream is corrupt or unsupported: {e}"
                    ) from None
                data = d.unused_data if d.eof else b""
                if out:
                    buf.append(out)
                    held += len(out)
            if held >= PIECE:
                joined = b"".join(buf)
                buf, held = [], 0
                for j in range(0, len(joined), PIECE):
                    yield joined[j : j + PIECE]
    if buf:
        yield b"".join(buf)
    if not d.eof:
        raise InvalidArgument("the archive's zstd stream is truncated (it ends inside a zstd frame)")


async def decompressed(
    chunks: AsyncIterator[bytes],
    *,
    max_zstd_window: int,
    max_expansion: int = 0,
    expansion_floor: int = 0,
) -> AsyncGenerator[bytes, None]:
    """The tar bytes of `chunks`, whatever the compression the first bytes announce.

    With `max_expansion`, a compressed archive may not give more than that many times its size
    (past `expansion_floor` bytes): a few KiB of zstd can expand to many GiB, and docker-save
    members need no digest, so they would reach containerd's disk before anything else fails.
    """
    source = _nonempty(chunks)
    head = b""
    async for chunk in source:
        head += chunk
        if len(head) >= 8:
            break
    if not head:
        raise InvalidArgument("the archive is empty")
    kind = detect(head)

    consumed = 0

    async def replay() -> AsyncGenerator[bytes, None]:
        nonlocal consumed
        try:
            consumed += len(head)
            yield head
            async for chunk in source:
                consumed += len(chunk)
                yield chunk
        finally:
            await source.aclose()

    raw = replay()
    if kind == "gzip":
        inner = _gunzip(raw)
    elif kind == "zstd":
        inner = _unzstd(raw, max_zstd_window)
    else:
        inner = raw
    checked = bool(max_expansion) and kind in ("gzip", "zstd")
    produced = 0
    # Closed in turn when the reader stops early (end-of-archive reached, or an error).
    async with aclosing(raw), aclosing(inner):
        async for piece in inner:
            produced += len(piece)
            if checked and produced > expansion_floor and produced > max_expansion * consumed:
                raise InvalidArgument(
                    f"the {kind} archive expands over {max_expansion} times ({consumed} bytes "
                    f"gave more than {produced}): refused as a decompression bomb; an image "
                    "that really is this compressible can be imported uncompressed"
                )
            yield piece


class Truncated(Exception):
    """The stream ended before `n` bytes could be read; `got` says how many were."""

    def __init__(self, got: int) -> None:
        super().__init__(got)
        self.got = got


class ByteReader:
    """Exact reads over an async iterator of byte pieces, holding at most one piece."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._chunk = b""
        self._pos = 0
        self._eof = False
        self.offset = 0  # bytes consumed so far (for messages)

    async def _fill(self) -> bool:
        while self._pos >= len(self._chunk):
            if self._eof:
                return False
            try:
                self._chunk = await anext(self._source)
            except StopAsyncIteration:
                self._eof = True
                self._chunk, self._pos = b"", 0
                return False
            self._pos = 0
        return True

    async def at_eof(self) -> bool:
        return not await self._fill()

    async def read_some(self, n: int) -> bytes:
        """1..n bytes, or b"" at the end of the stream."""
        if n <= 0 or not await self._fill():
            return b""
        end = min(len(self._chunk), self._pos + n)
        if self._pos == 0 and end == len(self._chunk):
            out = self._chunk
        else:
            out = self._chunk[self._pos : end]
        self._pos = end
        self.offset += len(out)
        return out

    async def read_exact(self, n: int) -> bytes:
        """Exactly n bytes; raises Truncated if the stream ends first."""
        first = await self.read_some(n)
        if len(first) == n:
            return first
        parts = [first]
        got = len(first)
        while got < n:
            piece = await self.read_some(n - got)
            if not piece:
                raise Truncated(got)
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    async def skip(self, n: int) -> None:
        """Discard exactly n bytes; raises Truncated if the stream ends first."""
        left = n
        while left:
            piece = await self.read_some(min(left, PIECE))
            if not piece:
                raise Truncated(n - left)
            left -= len(piece)
