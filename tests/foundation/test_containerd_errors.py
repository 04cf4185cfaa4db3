"""How containerd's failures become domain errors (pure logic on grpc's own error objects)."""

from __future__ import annotations

import grpc
import pytest

from imaged import errors
from imaged.containerd.client import Containerd


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.ABORTED, "transaction conflict", errors.Unavailable),
        (grpc.StatusCode.UNAVAILABLE, "connection refused", errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "slow", errors.Unavailable),
        (grpc.StatusCode.NOT_FOUND, "content sha256:x: not found", errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, "exists", errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, "size mismatch", errors.FailedPrecondition),
    ],
)
async def test_containerd_codes(code: grpc.StatusCode, details: str, expected: type) -> None:
    cd = Containerd("/nonexistent/containerd.sock")
    try:
        e = cd.translate(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details))
    finally:
        await cd.close()
    assert type(e) is expected and details in e.message
