"""Running on a node: systemd notify, read-only socket, SIGHUP reload, logs, metrics, crash hygiene."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import grpc
import pytest
import yaml

from imaged.config.models import ShutdownConfig
from imaged.containerd.leases import owner_alive, process_owner
from imaged.pb.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from imaged.pb.machine import image_pb2
from tests.conftest import REPO
from tests.pull.test_pull import leases, pull
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, SYSTEM, DaemonProcess
from tests.support.registry import Registry, free_port


@pytest.fixture(scope="module")
def registry() -> Registry:  # type: ignore[misc]
    reg = Registry()
    yield reg
    reg.close()


def test_systemd_notify_ready_and_stopping(containerd: PrivateContainerd, tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(30)
    d = DaemonProcess(containerd.socket, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    d.start()
    got: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while "READY=1" not in got and time.monotonic() < deadline:
            got.append(listener.recv(4096).decode())
        assert "READY=1" in got
        deadline = time.monotonic() + 5
        while "WATCHDOG=1" not in got and time.monotonic() < deadline:
            got.append(listener.recv(4096).decode())
        assert "WATCHDOG=1" in got
    finally:
        assert d.stop() == 0
    listener.settimeout(5)
    while "STOPPING=1" not in got:
        got.append(listener.recv(4096).decode())
    listener.close()


def test_unit_file_verifies() -> None:
    unit = REPO / "packaging" / "imaged.service"
    text = unit.read_text()
    assert "Type=notify" in text and "ExecStart=" in text and "ExecReload=" in text
    mode = re.search(r"^RuntimeDirectoryMode=(\d+)$", text, re.M)
    assert mode and int(mode.group(1), 8) & 0o001, "others traverse /run/imaged: socket modes decide access"
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M)
    assert stop and int(stop.group(1)) > ShutdownConfig().grace_seconds, "systemd waits out the grace"
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (Debian's systemd)"
    # Verify the unit as installed: ExecStart pointing at this environment's imaged.
    import sys
    import tempfile

    exe = str(pathlib.Path(sys.executable).parent / "imaged")
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "imaged.service"
        copy.write_text(text.replace("/usr/bin/imaged", exe))
        r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in r.stderr.splitlines() if "imaged.service" in line]
    assert not problems, r.stderr


def test_readonly_socket_roles(containerd: PrivateContainerd, tmp_path: pathlib.Path) -> None:
    ro_path = str(tmp_path / "ro.sock")
    d = DaemonProcess(containerd.socket, {"listen": {"readonly": {"path": ro_path, "mode": "0666"}}})
    d.start()
    try:
        with grpc.insecure_channel(f"unix:{ro_path}") as ch:
            from imaged.pb.machine import image_pb2_grpc

            ro = image_pb2_grpc.ImageServiceStub(ch)
            assert isinstance(list(ro.List(image_pb2.ImageServiceListRequest(containerd=CRI))), list)
            v = ro.Verify(
                image_pb2.ImageServiceVerifyRequest(image_ref="registry.test/ro/app@sha256:" + "a" * 64)
            )
            assert v.verified is False and v.message == "no matched rule"
            calls = [
                lambda: list(ro.Pull(image_pb2.ImageServicePullRequest(containerd=CRI, image_ref="x/y:z"))),
                lambda: ro.Remove(image_pb2.ImageServiceRemoveRequest(containerd=CRI, image_ref="x/y:z")),
                lambda: ro.Import(iter([image_pb2.ImageServiceImportRequest(containerd=CRI)])),
            ]
            for call in calls:
                with pytest.raises(grpc.RpcError) as e:
                    call()
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "read-only" in e.value.details()
        assert oct(os.stat(ro_path).st_mode & 0o777) == "0o666"
    finally:
        d.stop()


def _rules(d: DaemonProcess, rules: list[dict]) -> None:  # type: ignore[type-arg]
    cfg = dict(d.config)
    cfg["verification"] = {"rules": rules}
    d.config_path.write_text(yaml.safe_dump(cfg))


def test_sighup_reload(containerd: PrivateContainerd) -> None:
    d = DaemonProcess(
        containerd.socket, {"verification": {"rules": [{"image": "registry.test/hup/*", "deny": True}]}}
    )
    d.start()
    ref = "registry.test/hup/app@sha256:" + "b" * 64
    req = image_pb2.ImageServiceVerifyRequest(image_ref=ref)
    try:
        with pytest.raises(grpc.RpcError) as e:
            d.images.Verify(req)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        _rules(d, [{"image": "registry.test/hup/*", "skip": True}])
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in d.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        resp = d.images.Verify(req)
        assert resp.verified is False and "skipped" in resp.message
        # A broken file is refused; the running policy stays and the daemon serves on.
        d.config_path.write_text(
            "verification:\n  rules:\n    - image: registry.test/*\n      skip: true\n      deny: true\n"
        )
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in d.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused" in d.logs()
        assert "skipped" in d.images.Verify(req).message
        assert d.health() == "SERVING"
    finally:
        d.stop()


def test_sighup_leaves_restart_only_sections_as_they_run(
    containerd: PrivateContainerd, registry: Registry, tmp_path: pathlib.Path
) -> None:
    # A reload that also moves the socket and the containerd applies the policy only: the running
    # pulls' containerd stays, and at the end the socket bound is removed, not the new path.
    d = DaemonProcess(containerd.socket)
    d.start()
    elsewhere = tmp_path / "other.sock"
    elsewhere.write_text("someone else's socket")
    img = archives.simple_image("hup-sections")
    archives.push(registry, "ops/hup", "v1", img)
    try:
        cfg = dict(d.config)
        cfg["listen"] = {"admin": {"path": str(elsewhere)}}
        cfg["containerd"] = {"system_socket": "/nonexistent/c.sock", "cri_socket": "/nonexistent/c.sock"}
        cfg["verification"] = {"rules": [{"image": "registry.test/hup/*", "skip": True}]}
        d.config_path.write_text(yaml.safe_dump(cfg))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in d.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "changes to listen, containerd take effect only after a restart" in d.logs()
        ref = "registry.test/hup/app@sha256:" + "c" * 64
        assert "skipped" in d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref)).message
        name, _ = pull(d, f"{registry.host}/ops/hup:v1", SYSTEM)  # still the running containerd
        assert name.startswith(f"{registry.host}/ops/hup@")
    finally:
        assert d.stop() == 0
    assert not os.path.exists(d.socket), "the socket bound is removed at exit"
    assert elsewhere.read_text() == "someone else's socket", "a path the daemon never bound is left alone"


def test_logs_and_metrics(containerd: PrivateContainerd, registry: Registry) -> None:
    port = free_port()
    d = DaemonProcess(
        containerd.socket, {"metrics": {"listen": f"127.0.0.1:{port}"}, "log": {"format": "json"}}
    )
    d.start()
    secret = "pa55-w0rd-never-logged"
    try:
        img = archives.simple_image("logs")
        archives.push(registry, "ops/logs", "v1", img)
        pull(d, f"{registry.host}/ops/logs:v1", SYSTEM)
        list(d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM)))
        with pytest.raises(grpc.RpcError):
            d.images.Remove(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref="ops/none:v1"))
        d.images.Verify(
            image_pb2.ImageServiceVerifyRequest(
                image_ref=f"{registry.host}/ops/logs:v1",
                credentials=image_pb2.ImageServiceCredentials(
                    host=registry.host, username="bob", password=secret
                ),
            )
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'imaged_requests_total{code="OK",method="Pull"} 1.0' in body
        assert 'imaged_requests_total{code="OK",method="List"} 1.0' in body
        assert 'imaged_requests_total{code="NOT_FOUND",method="Remove"} 1.0' in body
        assert 'imaged_verifications_total{outcome="unverified"} 1.0' in body
        pulled = re.search(r"^imaged_pulled_bytes_total ([0-9.e+]+)$", body, re.M)
        # At least the image's own layer (the busybox one may be in containerd already).
        assert pulled and float(pulled.group(1)) >= len(img.layers[-1].blob)
        logs = d.logs()
        assert '"method": "Pull"' in logs and f"{registry.host}/ops/logs:v1" in logs
        assert '"code": "NOT_FOUND"' in logs
        # Read-only calls that succeed are DEBUG lines (CRI's Verify before every pull would flood).
        assert '"method": "List"' not in logs and '"method": "Verify"' not in logs
        assert secret not in logs and secret not in body
    finally:
        d.stop()


def test_kill_9_during_pull_leaves_no_lease(containerd: PrivateContainerd, registry: Registry) -> None:
    image = archives.Image(
        [archives.busybox_layer(), archives.layer({"big": os.urandom(64 << 20)}, compress=False)]
    )
    archives.push(registry, "ops/kill", "v1", image)
    ref = f"{registry.host}/ops/kill:v1"
    d = DaemonProcess(containerd.socket)
    d.start()
    call = d.images.Pull(image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=120)
    for msg in call:
        if msg.pull_progress.progress.offset > 0:
            break
    assert leases(containerd, "system"), "the pull holds a lease while it runs"
    d.kill()
    # The pull may have finished just before the kill; a lease exactly as a dead daemon leaves it
    # makes sure the start-up cleanup is exercised either way.
    with grpc.insecure_channel(f"unix:{containerd.socket}") as ch:
        leases_pb2_grpc.LeasesStub(ch).Create(
            leases_pb2.CreateRequest(id="imaged-pull-deadbeef", labels={"imaged.dev/lease": "1-dead"}),
            metadata=(("containerd-namespace", "system"),),
        )
    assert "imaged-pull-deadbeef" in leases(containerd, "system")
    d2 = DaemonProcess(containerd.socket)
    d2.start()
    try:
        deadline = time.monotonic() + 10
        while leases(containerd, "system") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leases(containerd, "system") == []
        name, _ = pull(d2, ref, SYSTEM)
        assert name.endswith(image.digest)
        # Leases of other programs are never touched.
        with grpc.insecure_channel(f"unix:{containerd.socket}") as ch:
            stub = leases_pb2_grpc.LeasesStub(ch)
            md = (("containerd-namespace", "system"),)
            stub.Create(leases_pb2.CreateRequest(id="someone-else"), metadata=md)
            # Nor those of another imaged still running on this containerd (here: this process).
            alive = {"imaged.dev/lease": process_owner()}
            stub.Create(leases_pb2.CreateRequest(id="imaged-pull-alive", labels=alive), metadata=md)
            d2.stop()
            d3 = DaemonProcess(containerd.socket)
            d3.start()
            time.sleep(1.5)
            d3.stop()
            ids = [le.id for le in stub.List(leases_pb2.ListRequest(), metadata=md).leases]
            assert "someone-else" in ids
            assert "imaged-pull-alive" in ids, "a running imaged's lease was taken at another's start"
            for lease_id in ("someone-else", "imaged-pull-alive"):
                stub.Delete(leases_pb2.DeleteRequest(id=lease_id), metadata=md)
    finally:
        d2.stop()


def test_lease_owner_names_a_live_process() -> None:
    me = process_owner()
    assert owner_alive(me)
    pid, start, ns, boot, _ = me.split("-")
    assert not owner_alive(f"{pid}-{int(start) + 1}-{ns}-{boot}-abcdef12"), "same pid, another start"
    assert not owner_alive(f"{pid}-{start}-{ns}-0000000000ff-abcdef12"), "from before a reboot"
    assert owner_alive(f"{pid}-{int(start) + 1}-{int(ns) + 1}-{boot}-abcdef12"), "another container: kept"
    assert not owner_alive("1-dead") and not owner_alive("") and not owner_alive("x-y-z-w-v")
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"/proc/{child.pid}/stat") as f:
            child_start = f.read().rpartition(")")[2].split()[19]
        assert owner_alive(f"{child.pid}-{child_start}-{ns}-{boot}-abcdef12")
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(f"{child.pid}-{child_start}-{ns}-{boot}-abcdef12")
