"""Import through the gRPC API: stream protocol errors and a real import that runs."""

from __future__ import annotations

import uuid

import grpc
import pytest

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, SYSTEM, DaemonProcess

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True


def chunked(instance: common_pb2.ContainerdInstance | None, data: bytes, size: int = 32 * 1024):  # type: ignore[no-untyped-def]
    if instance is not None:
        yield image_pb2.ImageServiceImportRequest(containerd=instance)
    for i in range(0, len(data), size):
        yield image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data[i : i + size]))


def test_import_runs_in_both_namespaces(daemon: DaemonProcess, containerd: PrivateContainerd) -> None:
    from tests.support import cri

    for inst, ns in ((CRI, "k8s.io"), (SYSTEM, "system")):
        marker = f"imported-{uuid.uuid4().hex[:6]}"
        name = f"registry.test/import/{marker}:v1"
        data = archives.oci_archive([(name, archives.simple_image(marker))])
        resp = daemon.images.Import(chunked(inst, data), timeout=120)
        assert resp.name == name
        out = containerd.ctr("run", "--rm", name, f"t-{marker}", namespace=ns, timeout=120).stdout
        assert marker in out
        if ns == "k8s.io":
            assert any(name in img.repo_tags for img in cri.list_images(containerd.socket))


def test_import_stream_protocol_errors(daemon: DaemonProcess) -> None:
    data = archives.oci_archive([("registry.test/import/proto:v1", archives.simple_image("proto"))])
    cases = [
        (iter([]), "containerd instance is required"),
        (chunked(None, data), "containerd instance is required"),
        (
            iter(
                [
                    image_pb2.ImageServiceImportRequest(containerd=CRI),
                    image_pb2.ImageServiceImportRequest(containerd=CRI),
                ]
            ),
            "must be an image_chunk",
        ),
    ]
    for stream, fragment in cases:
        with pytest.raises(grpc.RpcError) as e:
            daemon.images.Import(stream, timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in e.value.details()
    bad = common_pb2.ContainerdInstance(driver=common_pb2.CONTAINERD, namespace=common_pb2.NS_CRI)
    with pytest.raises(grpc.RpcError) as e:
        daemon.images.Import(chunked(bad, data), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        daemon.images.Import(chunked(CRI, b"this is not an archive at all" * 40), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert daemon.health() == "SERVING"
