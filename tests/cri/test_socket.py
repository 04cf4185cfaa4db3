"""The CRI socket as a listener: its permissions, what it serves (and does not), health, logs."""

from __future__ import annotations

import os
import pathlib
import stat
import time

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imaged.pb.machine import image_pb2, image_pb2_grpc
from imaged.pb.runtime.v1 import api_pb2
from tests.cri.conftest import Env
from tests.support import cri
from tests.support.daemon import CRI, run_imaged


def test_the_cri_socket_serves_cri_only(env: Env) -> None:
    assert stat.S_IMODE(os.stat(env.cri_socket).st_mode) == 0o660
    with grpc.insecure_channel(f"unix:{env.cri_socket}") as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            list(image_pb2_grpc.ImageServiceStub(ch).List(image_pb2.ImageServiceListRequest(containerd=CRI)))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as e, cri.images(env.daemon.socket) as stub:
        stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"{env.cri_socket} (runtime.v1.ImageService)" in env.daemon.logs()


def test_a_pull_is_logged_with_its_image(env: Env) -> None:
    with pytest.raises(grpc.RpcError), cri.images(env.cri_socket) as stub:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=f"{env.reg.host}/denied/logged:v1"))
        stub.PullImage(req, timeout=60)
    # The line is written as the call ends, which the client may see first.
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        lines = [
            ln for ln in env.daemon.logs().splitlines() if "PullImage ref=" in ln and "denied/logged" in ln
        ]
        time.sleep(0.05)
    assert lines, env.daemon.logs()[-2000:]
    assert "code=PERMISSION_DENIED" in lines[0]


def test_cri_socket_credentials_are_refused_at_load(tmp_path: pathlib.Path) -> None:
    """`listen.cri.credentials` was accepted and did nothing: CRI pulls use the request's `auth`,
    else the configured credentials, whatever it said."""
    path = tmp_path / "imaged.yaml"
    for value in ("request", "configured"):
        path.write_text(
            yaml.safe_dump({"listen": {"cri": {"path": str(tmp_path / "cri.sock"), "credentials": value}}})
        )
        for args in (["--check-config", str(path)], ["--config", str(path)]):
            r = run_imaged(*args)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert "cri.credentials" in r.stderr and "request's auth" in r.stderr, r.stderr
