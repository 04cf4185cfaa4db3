"""Review 2, item 7b: after containerd's pull succeeded, waiting for containerd's CRI to know the
names is bounded per call and never fails the pull.

The wait asks ImageStatus until containerd's CRI answers with the image; a call that hung held the
wait (and the kubelet's PullImage) for as long as it hung, and an error other than UNIMPLEMENTED
failed a pull whose image was already recorded. A real gRPC server stands in for containerd's CRI,
one that hangs or fails on ImageStatus (containerd cannot be made to)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from typing import Any

import grpc
import pytest

from imaged.containerd.client import Containerd
from imaged.cri import images as cri_images
from imaged.cri.images import CriImages
from imaged.pb.runtime.v1 import api_pb2_grpc


class Stuck(api_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
    def __init__(self, how: str) -> None:
        self.how = how
        self.calls = 0

    async def ImageStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        if self.how == "hangs":
            await asyncio.sleep(3600)
        await context.abort(grpc.StatusCode.INTERNAL, "boom: the CRI's cache is rebuilding")


@pytest.mark.parametrize("how", ["hangs", "fails"])
def test_the_wait_for_containerds_cri_is_bounded_and_never_fails_the_pull(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    monkeypatch.setattr(cri_images, "KNOWN_WAIT", 1.5)
    monkeypatch.setattr(cri_images, "STATUS_TIMEOUT", 0.4)
    sock = tmp_path / "cri.sock"

    async def scenario() -> tuple[float, int]:
        server = grpc.aio.server()
        servicer = Stuck(how)
        api_pb2_grpc.add_ImageServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        cd = Containerd(str(sock))
        images = CriImages(
            cd.ns("k8s.io"),
            decide=None,
            transfer=None,
            registry=None,
            pull_options=None,  # type: ignore[arg-type]
        )
        try:
            start = time.monotonic()
            async with asyncio.timeout(10):  # (it waited as long as the call hung)
                await images._known(["registry.example/app:v1", "sha256:" + "c" * 64], "sha256:" + "c" * 64)
            return time.monotonic() - start, servicer.calls
        finally:
            await cd.close()
            await server.stop(0)

    with caplog.at_level(logging.WARNING, logger="imaged.cri.images"):
        took, calls = asyncio.run(scenario())
    assert "the pull returns anyway" in caplog.text, caplog.text
    if how == "hangs":
        assert 1.4 < took < 3.0, took
        assert calls >= 2, "a hung call is given up within the wait and asked again"
    else:
        assert took < 1.0 and calls == 1, (took, calls)
        assert "boom" in caplog.text
