"""Listening sockets: replace a stale file, refuse to start over a live daemon, set mode/group."""

from __future__ import annotations

import grp
import os
import pathlib
import socket
import stat

from imaged.config.models import SocketConfig


class StartupError(Exception):
    """The daemon cannot start as configured; the message says why (no traceback)."""


class SocketInUse(StartupError):
    pass


def prepare(path: str) -> None:
    """Make `path` bindable: remove a dead daemon's socket; refuse a live one or a non-socket."""
    p = pathlib.Path(path)
    if len(os.fsencode(path)) >= 108:
        raise SocketInUse(f"socket path {path} is too long for a unix socket (108 bytes at most)")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError, OSError):
            p.unlink(missing_ok=True)
            return
    raise SocketInUse(f"another daemon is already serving on {path}; stop it first or choose another path")


def apply_permissions(cfg: SocketConfig) -> None:
    if cfg.group is not None:
        try:
            gid = int(cfg.group) if cfg.group.isdigit() else grp.getgrnam(cfg.group).gr_gid
        except KeyError:
            raise StartupError(f"group {cfg.group!r} for {cfg.path} does not exist") from None
        os.chown(cfg.path, -1, gid)
    os.chmod(cfg.path, cfg.mode)
