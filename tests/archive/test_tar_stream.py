"""The streaming tar reader and decompression, checked against Python's tarfile, gzip and zstandard."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import pytest
import zstandard

from imaged.archive.ingest import blob_digest, clean_path, sniff
from imaged.archive.stream import PIECE, ByteReader, Truncated, decompressed
from imaged.archive.tar import Kind, TarReader, _number
from imaged.errors import InvalidArgument
from tests.archive.builders import M, tar

WINDOW = 32 * 1024 * 1024


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(data: bytes, size: int) -> list[tuple[str, Kind, str, bytes]]:
    """(name, kind, linkname, data) of every member, reading the archive `size` bytes at a time."""
    tr = TarReader(
        ByteReader(decompressed(chunks(data, size), max_zstd_window=WINDOW)),
        max_members=1000,
        max_extension=1 << 20,
        max_names=1 << 24,
    )
    out = []
    async for m in tr.members():
        body = b""
        while piece := await tr.read(1000):
            body += piece
        # tarfile drops the trailing slash of directory names
        out.append((m.name.rstrip("/") if m.kind is Kind.DIR else m.name, m.kind, m.linkname, body))
    return out


def reference(data: bytes) -> list[tuple[str, Kind, str, bytes]]:
    kinds = {
        tarfile.REGTYPE: Kind.FILE,
        tarfile.DIRTYPE: Kind.DIR,
        tarfile.SYMTYPE: Kind.SYMLINK,
        tarfile.LNKTYPE: Kind.HARDLINK,
        tarfile.CHRTYPE: Kind.CHAR,
        tarfile.FIFOTYPE: Kind.FIFO,
    }
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            body = tf.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            out.append((m.name, kinds[m.type], m.linkname, body))
    return out


MEMBERS = [
    M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    M("dir", type=tarfile.DIRTYPE),
    M("a" * 150 + "/long-name.bin", os.urandom(3000)),
    M("link", type=tarfile.SYMTYPE, linkname="t" * 180),
    M("hard", type=tarfile.LNKTYPE, linkname="oci-layout"),
    M("dev", type=tarfile.CHRTYPE),
    M("fifo", type=tarfile.FIFOTYPE),
    M("empty", b""),
    M("exact-block", b"x" * 512),
    M("ünïcode/ファイル", b"utf-8 names need PAX"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("size", [1, 7, 512, 65536])
async def test_members_match_tarfile(fmt: int, size: int) -> None:
    data = tar(MEMBERS, format=fmt)
    assert await read_all(data, size) == reference(data)


async def test_ustar_prefix_field() -> None:
    name = "p" * 120 + "/" + "n" * 90  # fits ustar's prefix + name split
    data = tar([M(name, b"split")], format=tarfile.USTAR_FORMAT)
    assert await read_all(data, 100) == [(name, Kind.FILE, "", b"split")]


@pytest.mark.parametrize("compress", ["gzip", "zstd", "gzip-multi", "zstd-multi"])
async def test_compressed_archives_read_the_same(compress: str) -> None:
    data = tar(MEMBERS, format=tarfile.PAX_FORMAT)
    half = len(data) // 2
    packed = {
        "gzip": lambda: gzip.compress(data),
        "zstd": lambda: zstandard.ZstdCompressor().compress(data),
        "gzip-multi": lambda: gzip.compress(data[:half]) + gzip.compress(data[half:]),
        "zstd-multi": lambda: (
            zstandard.ZstdCompressor().compress(data[:half])
            + zstandard.ZstdCompressor().compress(data[half:])
        ),
    }[compress]()
    for size in (1, 13, 4096, 1 << 22):
        assert await read_all(packed, size) == reference(data)


async def drain(source: AsyncIterator[bytes]) -> tuple[int, int]:
    total = biggest = 0
    async for piece in source:
        total += len(piece)
        biggest = max(biggest, len(piece))
    return total, biggest


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
async def test_decompression_bomb_stays_bounded(kind: str) -> None:
    """Hundreds of MiB of zeros in well under a MiB: pieces stay <= PIECE and memory stays small."""
    if kind == "gzip":
        size = 128 * 1024 * 1024  # deflate tops out near 1000:1
        co = zlib.compressobj(9, wbits=31)
        block = bytes(1 << 20)
        packed = b"".join(co.compress(block) for _ in range(size >> 20)) + co.flush()
    else:
        size = 512 * 1024 * 1024  # zstd reaches ~32000:1
        packed = zstandard.ZstdCompressor(level=19).compress(bytes(size))
    assert len(packed) < size // 500
    tracemalloc.start()
    try:
        total, biggest = await drain(decompressed(chunks(packed, 4 << 20), max_zstd_window=WINDOW))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert biggest <= PIECE
    assert peak < 48 * 1024 * 1024, peak


async def test_zstd_window_is_bounded() -> None:
    """A frame that asks for a 128 MiB window (zstd --long=27, size unknown) is refused, not allocated."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=27, enable_ldm=True, write_content_size=False
    )
    co = zstandard.ZstdCompressor(compression_params=params).compressobj()
    packed = co.compress(os.urandom(1 << 16) * 40) + co.flush()
    assert zstandard.get_frame_parameters(packed).window_size == 1 << 27
    with pytest.raises(InvalidArgument, match="zstd stream is corrupt or unsupported"):
        await drain(decompressed(chunks(packed, 65536), max_zstd_window=1 << 20))


@pytest.mark.parametrize(
    ("head", "fragment"),
    [(b"BZh91AY&SY", "bzip2-compressed"), (b"PK\x03\x04rest", "zip-compressed"), (b"\xfd7zXZ\x00..", "xz")],
)
async def test_unsupported_compressions_are_named(head: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        await drain(decompressed(chunks(head + bytes(600), 3), max_zstd_window=WINDOW))


async def test_byte_reader_exact_reads_and_truncation() -> None:
    r = ByteReader(chunks(b"abcdefghij", 3))
    assert await r.read_exact(4) == b"abcd"
    assert await r.read_some(100) == b"ef"  # the rest of the current chunk only
    await r.skip(1)
    with pytest.raises(Truncated) as e:
        await r.read_exact(5)
    assert e.value.got == 3
    assert await r.at_eof()


async def test_a_member_name_that_is_not_utf8_is_read() -> None:
    # Latin-1 names exist in old archives; they are carried as surrogate escapes, and bounded alike.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\u00e9.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    got = await read_all(buf.getvalue(), 512)
    assert [(name.encode("utf-8", "surrogateescape"), data) for name, _, _, data in got] == [
        (b"caf\xe9.txt", b"ok")
    ]


async def test_member_limit_counts_members_not_extension_headers() -> None:
    data = tar([M("x" * 200 + str(i), b"") for i in range(5)], format=tarfile.PAX_FORMAT)
    tr = TarReader(ByteReader(chunks(data, 512)), max_members=5, max_extension=1 << 20, max_names=1 << 24)
    assert len([m async for m in tr.members()]) == 5
    tr = TarReader(ByteReader(chunks(data, 512)), max_members=4, max_extension=1 << 20, max_names=1 << 24)
    with pytest.raises(InvalidArgument, match="more than 4 members"):
        _ = [m async for m in tr.members()]


async def test_oversized_extension_header_is_refused() -> None:
    data = tar([M("x" * 5000, b"")], format=tarfile.PAX_FORMAT)
    tr = TarReader(ByteReader(chunks(data, 512)), max_members=5, max_extension=1024, max_names=1 << 24)
    with pytest.raises(InvalidArgument, match=r"PAX header of \d+ bytes .* over the 1024 byte limit"):
        _ = [m async for m in tr.members()]


def test_numeric_fields() -> None:
    assert _number(b"0000644\0", "m") == 0o644
    assert _number(b"   17 \0", "m") == 0o17
    big = 9 * 1024**3  # over the 8 GiB octal limit: GNU base-256
    assert _number(b"\x80" + big.to_bytes(11, "big"), "m") == big
    with pytest.raises(InvalidArgument, match="invalid numeric field"):
        _number(b"12x4\0", "m")


def test_paths_and_blob_names() -> None:
    assert clean_path("./blobs//sha256/abc") == "blobs/sha256/abc"
    assert clean_path("./") == ""
    with pytest.raises(InvalidArgument, match="absolute path"):
        clean_path("/x")
    with pytest.raises(InvalidArgument, match=r"'\.\.' path component"):
        clean_path("a/../../b")
    hexa = "ab" * 32
    assert blob_digest(f"blobs/sha256/{hexa}") == f"sha256:{hexa}"
    assert blob_digest("manifest.json") is None
    with pytest.raises(InvalidArgument, match="not named by a valid digest"):
        blob_digest("blobs/sha256/ABC")
    with pytest.raises(InvalidArgument, match="not named blobs/<algorithm>/<digest>"):
        blob_digest("blobs/sha256/x/y")


def test_sniff_layer_compression() -> None:
    plain = tar([M("f", b"data")])
    assert sniff(plain[:512]) == "tar"
    assert sniff(gzip.compress(plain)[:512]) == "gzip"
    assert sniff(zstandard.ZstdCompressor().compress(plain)[:512]) == "zstd"
    assert sniff(bytes(1024)[:512]) == "tar"  # an empty layer is two zero blocks
    assert sniff(b"just text" * 100) == ""
