"""Connecting to imaged and turning gRPC failures into one actionable line.

Imported only by commands that talk to the daemon: it pulls in grpc and the generated stubs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from imaged.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, one_line
from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2_grpc

DEFAULT_SOCKET = "/run/imaged/imaged.sock"
SOCKET_ENV = "IMAGED_SOCKET"

# --namespace -> (driver, namespace), talosctl's mapping (cmd/talosctl image.go): `system` is the
# CRI containerd's `system` namespace, `inmem` the node's own (system) containerd.
INSTANCES = {
    "cri": (common_pb2.CRI, common_pb2.NS_CRI),
    "system": (common_pb2.CRI, common_pb2.NS_SYSTEM),
    "inmem": (common_pb2.CONTAINERD, common_pb2.NS_SYSTEM),
}

# Text grpc-core (not the daemon) puts in the UNAVAILABLE statuses it makes itself. Matched narrowly:
# the daemon's own UNAVAILABLE messages (containerd or a registry unreachable) may well mention
# sockets and refused connections, and must not be blamed on imaged's socket.
_CONNECT_FAILED = ("failed to connect to all addresses",)
_CONNECTION_LOST = ("socket closed", "stream removed", "recvmsg:", "sendmsg:", "connection reset by peer")


def resolve_socket(flag: str | None) -> str:
    """--socket, then $IMAGED_SOCKET, then the daemon's default path."""
    return flag or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def instance(namespace: str) -> common_pb2.ContainerdInstance:
    driver, ns = INSTANCES[namespace]
    return common_pb2.ContainerdInstance(driver=driver, namespace=ns)


def _preflight(path: str) -> None:
    """Connect once with the stdlib: its errno names the real problem, grpc's retry text does not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(path)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
                reason += " (is imaged running?)"
            elif e.errno == errno.EACCES:
                reason += " (imaged's socket is for root and its group)"
            raise CliError(f"cannot connect to imaged at {path}: {reason}", EXIT_USAGE) from None


@contextlib.contextmanager
def cancel_on_interrupt(call: grpc.Future) -> Iterator[None]:
    """Ctrl-C cancels `call`, and KeyboardInterrupt is raised here once grpc has let go.

    Python raises KeyboardInterrupt wherever the main thread is, and with grpc's blocking calls
    that is inside its own lock handling: seen as "cannot release un-acquired lock" and as a
    client that never exits. The handler only asks another thread to cancel the call.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job: Ctrl-C is not ours
    ):
        yield
        return
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: the cancel did not let go, leave anyway
        interrupted.set()
        threading.Thread(target=call.cancel, name="cancel-on-interrupt", daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except (grpc.RpcError, grpc.FutureCancelledError):  # the second: a cancelled future's result()
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


class Client:
    """A channel to imaged's unix socket; a context manager so the channel is always closed."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket = os.path.abspath(socket_path)
        self.timeout = timeout
        self._channel: Any = None

    def __enter__(self) -> Client:
        _preflight(self.socket)
        self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def images(self) -> Any:
        return image_pb2_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def policy(self) -> Any:
        from imaged.pb.policy.v1 import policy_pb2_grpc

        return policy_pb2_grpc.PolicyServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def unary(self, method: str, request: Any, service: str = "images") -> Any:
        """A unary call that Ctrl-C cancels cleanly (see cancel_on_interrupt); raises grpc.RpcError."""
        stub = self.policy if service == "policy" else self.images
        future = getattr(stub, method).future(request, timeout=self.timeout)
        with cancel_on_interrupt(future):
            return future.result()

    @contextlib.contextmanager
    def rpc(self, doing: str = "") -> Iterator[None]:
        """Calls inside raise CliError, never grpc.RpcError."""
        try:
            yield
        except grpc.RpcError as e:
            raise self.error(e, doing) from None

    def error(self, e: grpc.RpcError, doing: str = "") -> CliError:
        """The status details as one line; transport failures name the socket and exit 2."""
        code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = one_line((e.details() if isinstance(e, grpc.Call) else "") or "")
        prefix = f"{doing}: " if doing else ""
        if code == grpc.StatusCode.UNAVAILABLE:
            low = details.lower()
            if low.startswith(_CONNECT_FAILED):
                return CliError(f"cannot connect to imaged at {self.socket}: {details}", EXIT_USAGE)
            if low.startswith(_CONNECTION_LOST):
                return CliError(f"lost the connection to imaged at {self.socket}: {details}", EXIT_USAGE)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self.timeout is not None:
            return CliError(
                f"{prefix}imaged did not finish within {self.timeout:g}s (--timeout)", EXIT_FAILED
            )
        if code == grpc.StatusCode.CANCELLED and not details:
            details = "cancelled"
        return CliError(f"{prefix}{details or code.name.lower().replace('_', ' ')}", EXIT_FAILED)
