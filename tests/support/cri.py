"""containerd's CRI image service, seen as a kubelet sees it (runtime.v1.ImageService/ListImages)."""

from __future__ import annotations

import functools
import importlib
import pathlib
import sys
import tempfile
from typing import Any

import grpc
from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "protos"


@functools.cache
def _modules() -> tuple[Any, Any]:
    out = pathlib.Path(tempfile.mkdtemp(prefix="cri-gen-"))
    import grpc_tools

    wkt = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "cri_images.proto",
        ]
    )
    assert rc == 0, "protoc failed for cri_images.proto"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("cri_images_pb2"), importlib.import_module("cri_images_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def list_images(socket: str) -> list[Any]:
    pb2, pb2_grpc = _modules()
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        return list(pb2_grpc.ImageServiceStub(ch).ListImages(pb2.ListImagesRequest(), timeout=30).images)
