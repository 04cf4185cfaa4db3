"""CRI, seen as a kubelet sees it: the image service (imaged's own stubs of runtime.v1) and the runtime
service (stubs generated at test time from tests/protos/cri_runtime.proto), to run a pulled image in
a pod sandbox with host networking through containerd's own CRI."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_tools import protoc

from imaged.pb.runtime.v1 import api_pb2, api_pb2_grpc

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
PROTO_DIR = REPO / "tests" / "protos"


@functools.cache
def runtime() -> tuple[Any, Any]:
    """(cri_runtime_pb2, cri_runtime_pb2_grpc), generated once per session."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="cri-gen-"))
    import grpc_tools

    wkt = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
    args = [f"-I{PROTO_DIR}", f"-I{REPO / 'protos'}", f"-I{wkt}"]
    rc = protoc.main(
        ["protoc", *args, f"--python_out={out}", f"--grpc_python_out={out}", "cri_runtime.proto"]
    )
    assert rc == 0, "protoc failed for cri_runtime.proto"
    for name in ("cri_runtime_pb2.py", "cri_runtime_pb2_grpc.py"):
        path = out / name
        # The image service's messages are imaged's (one descriptor pool per process).
        path.write_text(
            path.read_text().replace("from runtime.v1 import", "from imaged.pb.runtime.v1 import")
        )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("cri_runtime_pb2"), importlib.import_module("cri_runtime_pb2_grpc")
    finally:
        sys.path.remove(str(out))


@contextlib.contextmanager
def images(socket: str) -> Iterator[api_pb2_grpc.ImageServiceStub]:
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        yield api_pb2_grpc.ImageServiceStub(ch)


def list_images(socket: str) -> list[api_pb2.Image]:
    with images(socket) as stub:
        return list(stub.ListImages(api_pb2.ListImagesRequest(), timeout=30).images)


def image_status(socket: str, image: str) -> api_pb2.ImageStatusResponse:
    with images(socket) as stub:
        return stub.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image)), timeout=30)


def sandbox_image(containerd_socket: str) -> str:
    """The pause image containerd's CRI runs pod sandboxes with (its configuration, via Status)."""
    pb2, pb2_grpc = runtime()
    with grpc.insecure_channel(f"unix:{containerd_socket}") as ch:
        resp = pb2_grpc.RuntimeServiceStub(ch).Status(pb2.StatusRequest(verbose=True), timeout=30)
    return str(json.loads(resp.info["config"])["sandboxImage"])


def run_in_pod(
    containerd_socket: str, image_ref: str, log_dir: pathlib.Path, timeout: float = 60
) -> tuple[str, Any]:
    """Run `image_ref` (an image id, as PullImage returns) as the kubelet would: a pod sandbox with
    host networking, a container created by that id, started; return its log once it exited, and
    its ContainerStatus (whose `image` is the image's first tag as containerd's CRI knows it).
    Everything is removed afterwards."""
    pb2, pb2_grpc = runtime()
    name = f"imaged-test-{uuid.uuid4().hex[:8]}"
    sandbox = pb2.PodSandboxConfig(
        metadata=pb2.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="default"),
        log_directory=str(log_dir),
        linux=pb2.LinuxPodSandboxConfig(
            security_context=pb2.LinuxSandboxSecurityContext(
                namespace_options=pb2.NamespaceOption(network=pb2.NODE)
            )
        ),
    )
    with grpc.insecure_channel(f"unix:{containerd_socket}") as ch:
        rt = pb2_grpc.RuntimeServiceStub(ch)
        pod = rt.RunPodSandbox(pb2.RunPodSandboxRequest(config=sandbox), timeout=timeout).pod_sandbox_id
        try:
            config = pb2.ContainerConfig(
                metadata=pb2.ContainerMetadata(name="main"),
                image=api_pb2.ImageSpec(image=image_ref),
                log_path="main.log",
            )
            cid = rt.CreateContainer(
                pb2.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=sandbox),
                timeout=timeout,
            ).container_id
            try:
                rt.StartContainer(pb2.StartContainerRequest(container_id=cid), timeout=timeout)
                deadline = time.monotonic() + timeout
                while True:
                    st = rt.ContainerStatus(
                        pb2.ContainerStatusRequest(container_id=cid), timeout=timeout
                    ).status
                    if st.state == pb2.CONTAINER_EXITED or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                assert st.state == pb2.CONTAINER_EXITED, f"container did not exit: {st}"
                return (log_dir / "main.log").read_text(), st
            finally:
                rt.StopContainer(pb2.StopContainerRequest(container_id=cid, timeout=5), timeout=timeout)
                rt.RemoveContainer(pb2.RemoveContainerRequest(container_id=cid), timeout=timeout)
        finally:
            rt.StopPodSandbox(pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=timeout)
            rt.RemovePodSandbox(pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=timeout)
