"""Pull through the daemon from authenticated, HTTPS and mirrored registries (real docker-registry)."""

from __future__ import annotations

import pathlib
import uuid

import grpc
import pytest

from tests.pull.test_pull import pull, run
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.images import push_test_image
from tests.support.registry import Registry, free_port

FAST_RETRIES = {"retries": {"attempts": 2, "base_delay": 0.05, "max_delay": 0.1}}


def daemon_with(containerd: PrivateContainerd, registries: dict) -> DaemonProcess:  # type: ignore[type-arg]
    d = DaemonProcess(containerd.socket, {"registries": {**FAST_RETRIES, **registries}})
    d.start()
    return d


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_authenticated_registry(containerd: PrivateContainerd, mode: str) -> None:
    users = {"alice": "s3cret-pw"}
    with Registry(htpasswd=users, token_auth=mode == "token") as reg:
        push_test_image(reg, "auth/app", "v1")
        ref = f"{reg.host}/auth/app:v1"
        good = daemon_with(
            containerd, {"hosts": {reg.host: {"auth": {"username": "alice", "password": "s3cret-pw"}}}}
        )
        try:
            name, _ = pull(good, ref, SYSTEM)
            assert name.startswith(f"{reg.host}/auth/app@sha256:")
            assert "hello" in run(containerd, "system", ref)
            assert "s3cret-pw" not in good.logs()
        finally:
            good.stop()
        containerd.ctr("images", "rm", ref, namespace="system", check=False)
        bad = daemon_with(
            containerd, {"hosts": {reg.host: {"auth": {"username": "alice", "password": "wrong-pw"}}}}
        )
        anon = daemon_with(containerd, {})
        try:
            for d in (bad, anon):
                with pytest.raises(grpc.RpcError) as e:
                    pull(d, ref, SYSTEM)
                assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                assert reg.host in e.value.details()
                assert "wrong-pw" not in e.value.details()
            assert "wrong-pw" not in bad.logs()
        finally:
            bad.stop()
            anon.stop()


def test_https_private_ca(containerd: PrivateContainerd) -> None:
    with Registry(tls=True) as reg:
        push_test_image(reg, "tls/app", "v1")
        ref = f"{reg.host}/tls/app:v1"
        trusted = daemon_with(containerd, {"hosts": {reg.host: {"tls": {"ca_file": reg.ca_pem_path}}}})
        untrusted = daemon_with(containerd, {"hosts": {reg.host: {"plain_http": False}}})
        try:
            with pytest.raises(grpc.RpcError) as e:
                pull(untrusted, ref, SYSTEM)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reg.host in e.value.details()
            name, _ = pull(trusted, ref, SYSTEM)
            assert name.startswith(f"{reg.host}/tls/app@")
            assert "hello" in run(containerd, "system", ref)
        finally:
            trusted.stop()
            untrusted.stop()


def test_mirror_from_hosts_toml_serves_while_upstream_down(
    containerd: PrivateContainerd, tmp_path: pathlib.Path
) -> None:
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Registry() as mirror:
        push_test_image(mirror, "mirrored/app", "v1")
        certs = tmp_path / "certs.d" / upstream
        certs.mkdir(parents=True)
        (certs / "hosts.toml").write_text(
            f'server = "http://{upstream}"\n\n'
            f'[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        d = daemon_with(containerd, {"config_path": str(tmp_path / "certs.d")})
        try:
            ref = f"{upstream}/mirrored/app:v1"
            name, _ = pull(d, ref, SYSTEM)
            assert name.startswith(f"{upstream}/mirrored/app@sha256:")
            assert "hello" in run(containerd, "system", ref)
            assert any("ns=" in p for _, p, _ in mirror.requests()), "mirror requests carry ?ns=<upstream>"
        finally:
            d.stop()


def test_unreachable_registry_unavailable(containerd: PrivateContainerd) -> None:
    d = daemon_with(containerd, {})
    try:
        ref = f"127.0.0.1:{free_port()}/gone/app:{uuid.uuid4().hex[:6]}"
        with pytest.raises(grpc.RpcError) as e:
            pull(d, ref, SYSTEM)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ref.split("/")[0] in e.value.details()
    finally:
        d.stop()
