"""What imagectl puts on the wire, checked with a recording ImageService on a unix socket.

The real daemon cannot show the exact requests it received (chunk sizes, the instance, the
credentials host), so these tests stand in for it on that one question; every command is also
run against the real daemon in the other modules.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.cli.conftest import IMAGECTL, run_imagectl


class Recorder(image_pb2_grpc.ImageServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.pull_cancelled = threading.Event()
        self.import_started = threading.Event()
        self.import_cancelled = threading.Event()

    def Import(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        context.add_callback(self.import_cancelled.set)
        msgs = []
        for m in request_iterator:
            msgs.append(m)
            if m.WhichOneof("request") == "image_chunk":
                self.import_started.set()
        self.requests.append(msgs)
        return image_pb2.ImageServiceImportResponse(name="example.com/recorded:v1")

    def Verify(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return image_pb2.ImageServiceVerifyResponse(verified=False, message="recorded")

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return empty_pb2.Empty()

    def Pull(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.requests.append(request)
        context.add_callback(self.pull_cancelled.set)
        progress = image_pb2.ImageServicePullProgress(
            layer_id="0123456789ab",
            progress=image_pb2.ImageServicePullLayerProgress(
                status=image_pb2.ImageServicePullLayerProgress.DOWNLOADING, offset=1, total=10
            ),
        )
        yield image_pb2.ImageServicePullResponse(pull_progress=progress)
        while context.is_active():
            time.sleep(0.05)


@pytest.fixture
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, str]]:
    sock = str(tmp_path_factory.mktemp("wire", numbered=True) / "s.sock")
    if len(sock) > 100:
        sock = f"/tmp/ictl-wire-{os.getpid()}.sock"
    rec = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    image_pb2_grpc.add_ImageServiceServicer_to_server(rec, server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    yield rec, sock
    server.stop(grace=None)


def test_import_stream_shape(recorder: tuple[Recorder, str], tmp_path: pathlib.Path) -> None:
    rec, sock = recorder
    data = os.urandom(5 * 32 * 1024 + 1234)
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    r = run_imagectl("--socket", sock, "import", str(path))
    assert (r.rc, r.out) == (0, "imported image example.com/recorded:v1\n")
    r = run_imagectl("--socket", sock, "-n", "system", "import", "-", input=data)
    assert r.rc == 0, r.err
    for msgs, (driver, ns) in zip(
        rec.requests,
        [(common_pb2.CRI, common_pb2.NS_CRI), (common_pb2.CRI, common_pb2.NS_SYSTEM)],
        strict=True,
    ):
        assert msgs[0].WhichOneof("request") == "containerd"
        assert (msgs[0].containerd.driver, msgs[0].containerd.namespace) == (driver, ns)
        chunks = [m.image_chunk.bytes for m in msgs[1:]]
        assert all(m.WhichOneof("request") == "image_chunk" for m in msgs[1:])
        assert [len(c) for c in chunks] == [32768] * 5 + [1234]
        assert b"".join(chunks) == data


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("nginx", "docker.io"),
        ("index.docker.io/library/nginx:1.27", "docker.io"),
        ("ghcr.io/org/app:v1", "ghcr.io"),
        ("127.0.0.1:5000/app@sha256:" + "a" * 64, "127.0.0.1:5000"),
    ],
)
def test_verify_credentials_host(recorder: tuple[Recorder, str], image: str, host: str) -> None:
    rec, sock = recorder
    r = run_imagectl("--socket", sock, "verify", image, "-u", "bob", "--password-stdin", input=b"pw\n")
    assert r.rc == 1 and "recorded" in r.out
    req = rec.requests[-1]
    assert req.image_ref == image
    assert (req.credentials.host, req.credentials.username, req.credentials.password) == (host, "bob", "pw")
    r = run_imagectl(
        "--socket", sock, "verify", image, "-u", "bob", "-p", "pw", "--registry-host", "mirror.local"
    )
    assert rec.requests[-1].credentials.host == "mirror.local"
    run_imagectl("--socket", sock, "verify", image)
    assert not rec.requests[-1].HasField("credentials")


def test_remove_sends_each_ref_verbatim(recorder: tuple[Recorder, str]) -> None:
    rec, sock = recorder
    r = run_imagectl("--socket", sock, "rm", "a", "sha256:" + "b" * 64, "c@sha256:" + "d" * 64)
    assert r.rc == 0 and len(r.lines) == 3
    assert [q.image_ref for q in rec.requests] == ["a", "sha256:" + "b" * 64, "c@sha256:" + "d" * 64]
    assert all(
        (q.containerd.driver, q.containerd.namespace) == (common_pb2.CRI, common_pb2.NS_CRI)
        for q in rec.requests
    )


def _imagectl(sock: str, *args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*IMAGECTL, "--socket", sock, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin
    )


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err.decode()) == (130, b"", "imagectl: interrupted\n")


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.01, 0.05])
def test_interrupted_pull_cancels_the_call(recorder: tuple[Recorder, str], delay: float) -> None:
    # Ctrl-C at several moments, a few times each: a KeyboardInterrupt raised inside grpc's locks
    # once gave "cannot release un-acquired lock" or a client that never exited.
    rec, sock = recorder
    for _ in range(3):
        rec.pull_cancelled.clear()
        proc = _imagectl(sock, "pull", "slow/image")
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first == "layer 0123456789ab downloading 1 B/10 B (10.0%)\n"
        time.sleep(delay)
        _interrupt(proc)
        assert rec.pull_cancelled.wait(10), "the daemon side never saw the call end"


def test_interrupted_import_cancels_the_call(recorder: tuple[Recorder, str]) -> None:
    rec, sock = recorder
    proc = _imagectl(sock, "import", "-", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(64 * 1024))  # and stdin stays open: the import waits for more
    proc.stdin.flush()
    assert rec.import_started.wait(30), "the import never reached the daemon"
    _interrupt(proc)
    assert rec.import_cancelled.wait(10), "the daemon side never saw the call end"


def test_timeout_names_the_wait(recorder: tuple[Recorder, str]) -> None:
    _, sock = recorder
    r = run_imagectl("--socket", sock, "--timeout", "1", "pull", "slow/image")
    assert r.rc == 1
    assert r.err == "imagectl: imaged did not finish within 1s (--timeout)\n"


SERVER = """
import sys, time
from concurrent import futures
import grpc
from imaged.pb.machine import image_pb2_grpc
from tests.cli.test_wire import Recorder
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
image_pb2_grpc.add_ImageServiceServicer_to_server(Recorder(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
print("ready", flush=True)
time.sleep(120)
"""


def test_daemon_dying_mid_pull(tmp_path: pathlib.Path) -> None:
    sock = f"/tmp/ictl-die-{os.getpid()}.sock"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, sock],
        stdout=subprocess.PIPE,
        cwd=str(pathlib.Path(__file__).parents[2]),
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        proc = subprocess.Popen(
            [*IMAGECTL, "--socket", sock, "pull", "x"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stdout.readline().startswith(
            b"layer 0123456789ab downloading"
        )
        server.kill()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert err.decode().startswith(f"imagectl: lost the connection to imaged at {sock}: ")
        assert err.count(b"\n") == 1
    finally:
        server.kill()
        server.wait()
        if os.path.exists(sock):
            os.unlink(sock)


class Unavailable(Recorder):
    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.UNAVAILABLE, "containerd at /run/c.sock unreachable: connect: Connection refused"
        )


def test_daemon_unavailable_is_not_blamed_on_its_socket(tmp_path: pathlib.Path) -> None:
    sock = f"/tmp/ictl-unav-{os.getpid()}.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    image_pb2_grpc.add_ImageServiceServicer_to_server(Unavailable(), server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        r = run_imagectl("--socket", sock, "rm", "a")
        assert (r.rc, r.out) == (1, "")
        message = "containerd at /run/c.sock unreachable: connect: Connection refused"
        assert r.err == f"imagectl: cannot remove a: {message}\n"
    finally:
        server.stop(grace=None)
