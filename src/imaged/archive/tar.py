"""A small streaming tar reader: ustar, GNU long names/links and PAX headers, nothing else.

It reads member headers and data straight off a ByteReader as chunks arrive, so members can be
passed on (to containerd) without a seekable file, a temp file or a thread. Only what an image
archive needs is understood; everything else is reported as a member of kind OTHER so the caller
can refuse it where a blob is expected.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from imaged.archive.stream import PIECE, ByteReader, Truncated
from imaged.errors import InvalidArgument

BLOCK = 512
# A member name or link target (PATH_MAX): longer ones name nothing a file system could hold.
MAX_NAME = 4096
# Header types that describe the next member: PAX (local, global) and GNU long name and link.
_EXTENSIONS = (b"x", b"g", b"L", b"K")


class Kind(enum.Enum):
    FILE = "regular file"
    DIR = "directory"
    SYMLINK = "symbolic link"
    HARDLINK = "hard link"
    CHAR = "character device"
    BLOCK = "block device"
    FIFO = "FIFO"
    SPARSE = "sparse file"
    OTHER = "member of an unsupported type"


_KINDS = {
    b"0": Kind.FILE,
    b"\0": Kind.FILE,
    b"7": Kind.FILE,  # contiguous file: a regular file for every practical purpose
    b"1": Kind.HARDLINK,
    b"2": Kind.SYMLINK,
    b"3": Kind.CHAR,
    b"4": Kind.BLOCK,
    b"5": Kind.DIR,
    b"6": Kind.FIFO,
    b"S": Kind.SPARSE,
}
# Types whose size field does not announce data (tar, Go and Python agree).
_HEADER_ONLY = {Kind.HARDLINK, Kind.SYMLINK, Kind.CHAR, Kind.BLOCK, Kind.DIR, Kind.FIFO}


@dataclass(slots=True)
class Member:
    name: str
    kind: Kind
    size: int
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)

    @property
    def data_size(self) -> int:
        return 0 if self.kind in _HEADER_ONLY else self.size


def _nts(b: bytes) -> bytes:
    """A NUL-terminated string field."""
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _number(field_: bytes, what: str) -> int:
    """An octal field, or GNU base-256 when the high bit of the first byte is set."""
    if field_ and field_[0] & 0x80:
        value = int.from_bytes(field_[1:], "big") | ((field_[0] & 0x3F) << (8 * (len(field_) - 1)))
        if field_[0] & 0x40:
            value -= 1 << (8 * len(field_) - 2)
        return value
    s = _nts(field_).strip(b" \0")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise InvalidArgument(f"tar header of {what} has an invalid numeric field {s!r}") from None


def checksum_ok(block: bytes) -> bool:
    try:
        want = int(_nts(block[148:156]).strip(b" \0") or b"-1", 8)
    except ValueError:
        return False
    body = block[:148] + b" " * 8 + block[156:]
    if sum(body) == want:
        return True
    # Some old tars summed signed chars.
    return sum(x - 256 if x > 127 else x for x in body) == want


def _parse_pax(data: bytes, what: str) -> dict[str, str]:
    """PAX extended header records: `<len> <key>=<value>\\n`."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record (no slice of the rest: quadratic)
            break
        sp = data.find(b" ", pos, pos + 32)
        try:
            length = int(data[pos:sp]) if sp > pos else -1
        except ValueError:
            length = -1
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise InvalidArgument(f"tar archive has a malformed PAX header before {what}")
        record = data[sp + 1 : end - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise InvalidArgument(f"tar archive has a malformed PAX record before {what}")
        out[_decode(key)] = _decode(value)
        pos = end
    return out


class TarReader:
    """`async for member in reader.members()`, reading each member's data (or not) in between."""

    def __init__(self, src: ByteReader, *, max_members: int, max_extension: int, max_names: int) -> None:
        self.src = src
        self.max_members = max_members
        self.max_extension = max_extension
        self.max_names = max_names
        self.names = 0
        self.count = 0
        self._unread = 0  # data bytes of the current member not yet read
        self._padding = 0
        self._current = "the first member"

    def _truncated(self, where: str) -> InvalidArgument:
        return InvalidArgument(f"the archive is truncated: it ends {where}")

    async def _finish_member(self) -> None:
        try:
            await self.src.skip(self._unread)
        except Truncated as e:
            raise self._truncated(
                f"inside member {self._current} ({self._unread - e.got} bytes missing)"
            ) from None
        self._unread = 0
        try:
            await self.src.skip(self._padding)
        except Truncated:
            raise self._truncated(f"in the padding after member {self._current}") from None
        self._padding = 0

    async def _block(self, first: bool) -> bytes | None:
        """The next 512-byte header block, or None at the end of the stream."""
        if await self.src.at_eof():
            return None
        try:
            return await self.src.read_exact(BLOCK)
        except Truncated as e:
            if first:
                raise InvalidArgument(
                    f"the archive is not a tar archive (nor a gzip- or zstd-compressed one): "
                    f"it holds only {e.got} bytes"
                ) from None
            raise self._truncated(f"inside the tar header after member {self._current}") from None

    async def _extension(self, size: int, what: str) -> bytes:
        if size > self.max_extension:
            raise InvalidArgument(
                f"tar archive has a {what} header of {size} bytes after {self._current}, "
                f"over the {self.max_extension} byte limit"
            )
        try:
            data = await self.src.read_exact(size)
            await self.src.skip(-size % BLOCK)
        except Truncated:
            raise self._truncated(f"inside a {what} header after {self._current}") from None
        return data

    async def members(self) -> AsyncIterator[Member]:
        first = True
        while True:
            await self._finish_member()
            pax: dict[str, str] = {}
            longname: str | None = None
            longlink: str | None = None
            extensions = 0  # bytes of extension headers before this member, bounded all together
            while True:
                block = await self._block(first)
                if block is None:
                    if first:
                        raise InvalidArgument("the archive is empty")
                    return  # no end-of-archive blocks: accepted, like Go's archive/tar
                if block == b"\0" * BLOCK:
                    if first:
                        raise InvalidArgument(
                            "the archive holds no members (it starts with an end-of-archive block)"
                        )
                    return
                if not checksum_ok(block):
                    if first:
                        raise InvalidArgument(
                            "the archive is not a tar archive (nor a gzip- or zstd-compressed one): "
                            "its first 512 bytes are not a tar header"
                        )
                    raise InvalidArgument(f"tar header after member {self._current} has a bad checksum")
                first = False
                type_ = block[156:157]
                size = _number(block[124:136], f"the member after {self._current}")
                if size < 0:
                    raise InvalidArgument(f"tar header after member {self._current} has a negative size")
                if type_ in _EXTENSIONS:
                    extensions += size
                    if size <= self.max_extension < extensions:  # one alone over: _extension says so
                        raise InvalidArgument(
                            f"tar archive has {extensions} bytes of extension headers before the member "
                            f"after {self._current}, over the {self.max_extension} byte limit"
                        )
                if type_ == b"x":
                    pax.update(_parse_pax(await self._extension(size, "PAX"), self._current))
                elif type_ == b"g":
                    _parse_pax(await self._extension(size, "PAX global"), self._current)
                elif type_ == b"L":
                    longname = _decode(_nts(await self._extension(size, "GNU long name")))
                elif type_ == b"K":
                    longlink = _decode(_nts(await self._extension(size, "GNU long link")))
                else:
                    break
            member = self._member(block, size, pax, longname, longlink)
            self._check_names(member)
            self.count += 1
            if self.count > self.max_members:
                raise InvalidArgument(f"the archive has more than {self.max_members} members")
            self._current = repr(member.name)
            self._unread = member.data_size
            self._padding = -member.data_size % BLOCK
            yield member

    def _check_names(self, member: Member) -> None:
        """Names are kept until the archive is planned: each, and all together, are bounded."""
        # Names were decoded with surrogateescape (not all archives are UTF-8): encoded back alike.
        name, link = (len(x.encode("utf-8", "surrogateescape")) for x in (member.name, member.linkname))
        size = name + link
        if max(name, link) > MAX_NAME:
            raise InvalidArgument(
                f"archive member {member.name[:100]!r}... has a name or link target over {MAX_NAME} bytes"
            )
        self.names += size
        if self.names > self.max_names:
            raise InvalidArgument(
                f"the archive's member names and link targets total over {self.max_names} bytes"
            )

    def _member(
        self, block: bytes, size: int, pax: dict[str, str], longname: str | None, longlink: str | None
    ) -> Member:
        name = _decode(_nts(block[0:100]))
        if block[257:263] == b"ustar\x00":  # POSIX ustar: name may be split into prefix/name
            prefix = _decode(_nts(block[345:500]))
            if prefix:
                name = f"{prefix}/{name}"
        linkname = _decode(_nts(block[157:257]))
        if longname is not None:
            name = longname
        if longlink is not None:
            linkname = longlink
        name = pax.get("path", name)
        linkname = pax.get("linkpath", linkname)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise InvalidArgument(f"PAX header of member {name!r} has an invalid size") from None
            if size < 0:
                raise InvalidArgument(f"PAX header of member {name!r} has a negative size")
        kind = _KINDS.get(block[156:157], Kind.OTHER)
        if kind is Kind.FILE and any(k.startswith("GNU.sparse.") for k in pax):
            kind = Kind.SPARSE
            name = pax.get("GNU.sparse.name", name)
        return Member(name, kind, size, linkname, pax)

    async def read(self, max_size: int = PIECE) -> bytes:
        """The next piece of the current member's data (exactly min(max_size, left) bytes); b"" at its end."""
        n = min(max_size, self._unread)
        if n <= 0:
            return b""
        try:
            data = await self.src.read_exact(n)
        except Truncated as e:
            raise self._truncated(
                f"inside member {self._current} ({self._unread - e.got} bytes missing)"
            ) from None
        self._unread -= n
        return data

    @property
    def unread(self) -> int:
        return self._unread
