"""Reading the files the verification configuration names (`trustedRoot`, `tuf.root`, saved roots).

A path may name anything: a FIFO, whose open waits for a writer forever, or a device such as
/dev/kmsg or /dev/zero, whose reads block or never end. These files are read on the daemon's
behalf (at load, on SIGHUP, for a PolicyService.Test candidate), so only regular files are read:
the path is checked before it is opened, opened with O_NONBLOCK (a FIFO swapped in meanwhile does
not block the open) and checked again on the open descriptor, and at most `limit + 1` bytes read.
"""

from __future__ import annotations

import errno
import os
import stat

CHUNK = 64 * 1024


def _not_regular(path: str | os.PathLike[str]) -> OSError:
    return OSError(errno.EINVAL, "not a regular file", os.fspath(path))


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most `limit + 1` bytes of the regular file `path` (one more than allowed tells the caller
    it is too large). Raises OSError; `strerror` says why ("not a regular file", ...)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise _not_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_regular(path)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
