"""The daemon process: configuration errors, sockets, health while containerd comes and goes."""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import time

import grpc
import pytest
import yaml

from imaged.pb.machine import image_pb2
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, DaemonProcess, run_imaged


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("listen:\n  admin:\n    pth: /tmp/x\n", "listen.admin.pth"),
        ("containerd:\n  snapshoter: native\n", "containerd.snapshoter"),
        ("listen:\n  admin:\n    mode: '0999'\n", "listen.admin.mode"),
        ("pull:\n  max_concurrent_downloads: 0\n", "pull.max_concurrent_downloads"),
        ("bogus: 1\n", "bogus"),
        # A second section would silently replace the first (here: its deny policy).
        ("verification:\n  noMatch: deny\nverification:\n  rules: []\n", "key 'verification' is given twice"),
        (
            "listen:\n  admin: {path: /tmp/a.sock}\n  readonly: {path: /tmp/a.sock}\n",
            "readonly.path must differ",
        ),
        ("listen:\n  admin:\n    mode: true\n", "listen.admin.mode"),
    ],
)
def test_bad_config_exits_naming_key(tmp_path, text: str, key: str) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = run_imaged("--config", str(cfg))
    assert r.returncode != 0
    assert key in r.stderr
    assert str(cfg) in r.stderr


def test_config_not_yaml_or_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listen: [unclosed\n")
    r = run_imaged("--config", str(cfg))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    r = run_imaged("--config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 2 and "cannot read configuration" in r.stderr


def test_config_not_utf8_and_gid_as_number(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("log:\n  level: info # caf\u00e9\n".encode("latin-1"))
    r = run_imaged("--config", str(cfg))
    assert r.returncode == 2 and "not UTF-8 text" in r.stderr and "Traceback" not in r.stderr
    from imaged.config.loader import load_text

    assert load_text("listen:\n  admin:\n    group: 1000\n").listen.admin.group == "1000"


def test_example_config_is_valid() -> None:
    from tests.conftest import REPO

    example = str(REPO / "config.example.yaml")
    # Its policy is open (no rule, noMatch allow): valid, with that warning; --strict refuses it.
    valid = f"imaged: configuration {example} is valid (1 warning)\n"
    r = run_imaged("--config", example, "--check-config")
    assert (r.returncode, r.stdout.splitlines(True)[-1]) == (0, valid), r.stderr
    assert r.stdout.startswith("warning: verification: noMatch is allow: an image no rule matches")
    # The file may also follow the flag, as people type it.
    r = run_imaged("--check-config", example)
    assert (r.returncode, r.stdout.splitlines(True)[-1]) == (0, valid), r.stderr
    r = run_imaged("--check-config", example, "--strict")
    assert r.returncode == 1 and "--strict: refusing a configuration with warnings" in r.stderr
    r = run_imaged("--check-config", example, "--config", "/elsewhere.yaml")
    assert r.returncode == 2 and "name two files" in r.stderr


def test_socket_mode_and_stale_socket(containerd: PrivateContainerd) -> None:
    d = DaemonProcess(containerd.socket)
    # A stale socket file, as a daemon killed with -9 leaves behind.
    s = socket.socket(socket.AF_UNIX)
    s.bind(d.socket)
    s.close()
    d.start()
    try:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
        assert list(d.images.List(image_pb2.ImageServiceListRequest(containerd=CRI))) is not None
        # A second daemon on the same path refuses to start and says why.
        r = run_imaged("--config", str(d.config_path))
        assert r.returncode == 1
        assert f"another daemon is already serving on {d.socket}" in r.stderr
        assert d.health() == "SERVING"  # the first one is unharmed
    finally:
        assert d.stop() == 0
    assert not os.path.exists(d.socket)


def test_a_start_that_fails_after_binding_says_why_and_leaves_no_socket(
    containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    sock = str(tmp_path / "s.sock")
    base = {"containerd": {"system_socket": containerd.socket, "cri_socket": containerd.socket}}
    cases = [
        ({"listen": {"admin": {"path": sock}}, "metrics": {"listen": f"127.0.0.1:{port}"}}, "cannot start"),
        ({"listen": {"admin": {"path": sock, "group": "no-such-group-xyz"}}}, "group 'no-such-group-xyz'"),
    ]
    try:
        for extra, fragment in cases:
            path = tmp_path / "c.yaml"
            path.write_text(yaml.safe_dump({**base, **extra}))
            r = run_imaged("--config", str(path))
            assert r.returncode == 1, r.stderr
            assert fragment in r.stderr and "Traceback" not in r.stderr, r.stderr
            assert not os.path.exists(sock), "the socket it bound is removed"
    finally:
        taken.close()


def test_custom_socket_mode(containerd: PrivateContainerd) -> None:
    d = DaemonProcess(containerd.socket, {"listen": {"admin": {"mode": "0600"}}})
    d.start()
    try:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    finally:
        d.stop()


def test_containerd_down_unavailable_then_recovers() -> None:
    cd = PrivateContainerd()
    cd.start()
    d = DaemonProcess(cd.socket)
    d.start()
    try:
        assert d.health() == "SERVING"
        cd.stop()
        with pytest.raises(grpc.RpcError) as e:
            list(d.images.List(image_pb2.ImageServiceListRequest(containerd=CRI), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cd.socket in e.value.details()
        deadline = time.monotonic() + 10
        while d.health() != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.health() == "NOT_SERVING"
        assert d.health("machine.ImageService") == "NOT_SERVING"
        cd.start()
        deadline = time.monotonic() + 15
        while d.health() != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.health() == "SERVING"
        assert isinstance(
            list(d.images.List(image_pb2.ImageServiceListRequest(containerd=CRI), timeout=10)), list
        )
    finally:
        d.stop()
        cd.destroy()


def test_sigterm_and_sigint_shut_down_cleanly(containerd: PrivateContainerd) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        d = DaemonProcess(containerd.socket)
        d.start()
        assert d.stop(sig) == 0
        assert "shutting down" in d.logs()
        assert not os.path.exists(d.socket)


def test_reflection_lists_services(containerd: PrivateContainerd, daemon: DaemonProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(iter(stub.ServerReflectionInfo(iter([req]), timeout=10)))
    names = {s.name for s in resp.list_services_response.service}
    assert {"machine.ImageService", "grpc.health.v1.Health"} <= names


def test_a_long_non_ascii_error_keeps_its_status_code(daemon: DaemonProcess) -> None:
    # Details travel percent-encoded in a header the client bounds at 8 KiB: 3,000 "é" quoted
    # twice in the message arrived as RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT.
    req = image_pb2.ImageServiceVerifyRequest(image_ref="é" * 3000)
    with pytest.raises(grpc.RpcError) as e:
        daemon.images.Verify(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "invalid image reference" in (e.value.details() or "")
