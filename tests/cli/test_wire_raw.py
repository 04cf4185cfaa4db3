"""What imagectl puts on the wire, decoded by hand from Talos's field numbers, and what it makes of
answers encoded by hand.

The server here has no stubs at all: it receives every request as raw bytes and answers raw
bytes written with `tests.support.wire`, so imagectl's messages are judged against the published
contract (the seed proto, and Talos's common.proto), not against our own generated code.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.cli.conftest import run_imagectl
from tests.support import wire as w

Reply = Callable[[list[bytes]], Any]


class RawServer:
    """machine.ImageService with identity (de)serializers: requests recorded as bytes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.replies: dict[str, Reply] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        server = self

        def record(method: str, requests: list[bytes]) -> Any:
            server.calls.append((method, requests))
            return server.replies[method](requests)

        def unary(method: str) -> Any:
            return grpc.unary_unary_rpc_method_handler(lambda req, ctx: record(method, [req]))

        def server_stream(method: str) -> Any:
            return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter(record(method, [req])))

        def client_stream(method: str) -> Any:
            return grpc.stream_unary_rpc_method_handler(lambda reqs, ctx: record(method, list(reqs)))

        return grpc.method_handlers_generic_handler(
            "machine.ImageService",
            {
                "List": server_stream("List"),
                "Pull": server_stream("Pull"),
                "Import": client_stream("Import"),
                "Remove": unary("Remove"),
                "Verify": unary("Verify"),
            },
        )


@pytest.fixture
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawServer, str]]:
    sock = str(tmp_path_factory.mktemp("raw", numbered=True) / "s.sock")
    if len(sock) > 100:
        sock = f"/tmp/ictl-raw-{os.getpid()}.sock"
    rec = RawServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((rec.handler(),))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    yield rec, sock
    server.stop(grace=None)


def decode_instance(buf: bytes) -> tuple[int, int]:
    """(driver, namespace); proto3 leaves zero values (CONTAINERD, NS_UNKNOWN) off the wire."""
    f = w.fields_by_name("ContainerdInstance", buf)
    driver, ns = f.get("driver", [0])[0], f.get("namespace", [0])[0]
    assert isinstance(driver, int) and isinstance(ns, int)
    return driver, ns


def the_instance(fields: dict[str, list[int | bytes]]) -> tuple[int, int]:
    value = w.one(fields, "containerd")
    assert isinstance(value, bytes)
    return decode_instance(value)


LISTED = w.message(
    "ImageServiceListResponse",
    name="example.com/app:v1",
    digest="sha256:" + "ab" * 32,
    size=1234,
    created_at=w.field(1, 1_767_225_600),  # google.protobuf.Timestamp{seconds}
    labels=w.field(1, "k") + w.field(2, "v"),  # a map entry {key = 1, value = 2}
)


@pytest.mark.parametrize("namespace", ["cri", "system", "inmem"])
def test_namespaces_are_talosctls(raw: tuple[RawServer, str], namespace: str) -> None:
    rec, sock = raw
    rec.replies["List"] = lambda reqs: [LISTED]
    r = run_imagectl("--socket", sock, "-n", namespace, "list", "-o", "json")
    assert r.rc == 0, r.err
    method, [request] = rec.calls[-1]
    assert method == "List"
    assert (
        the_instance(w.fields_by_name("ImageServiceListRequest", request)) == w.TALOSCTL_INSTANCES[namespace]
    )
    # ...and the hand-encoded answer is read field by field.
    [row] = [json.loads(line) for line in r.lines]
    assert row["name"] == "example.com/app:v1" and row["digest"] == "sha256:" + "ab" * 32
    assert row["size"] == 1234 and row["labels"] == {"k": "v"}
    assert row["created_at"].startswith("2026-01-01T00:00:00")


def test_import_chunks_travel_in_data_field_2(raw: tuple[RawServer, str], tmp_path: pathlib.Path) -> None:
    rec, sock = raw
    rec.replies["Import"] = lambda reqs: w.message("ImageServiceImportResponse", name="example.com/got:v1")
    data = os.urandom(2 * 32 * 1024 + 77)
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    r = run_imagectl("--socket", sock, "-n", "system", "import", str(path))
    assert (r.rc, r.out) == (0, "imported image example.com/got:v1\n"), r.err
    method, requests = rec.calls[-1]
    assert method == "Import"
    first = w.fields_by_name("ImageServiceImportRequest", requests[0])
    assert set(first) == {"containerd"} and the_instance(first) == w.TALOSCTL_INSTANCES["system"]
    chunks = []
    for msg in requests[1:]:
        f = w.fields_by_name("ImageServiceImportRequest", msg)
        assert set(f) == {"image_chunk"}
        chunk = w.one(f, "image_chunk")
        assert isinstance(chunk, bytes)
        data_fields = w.fields_by_name("Data", chunk)
        assert set(data_fields) == {"bytes"}, "the chunk is Data.bytes (field 2), and nothing else"
        value = w.one(data_fields, "bytes")
        assert isinstance(value, bytes)
        chunks.append(value)
    assert [len(c) for c in chunks] == [32768, 32768, 77]
    assert b"".join(chunks) == data


def test_pull_request_and_progress(raw: tuple[RawServer, str]) -> None:
    rec, sock = raw
    layer = w.message("ImageServicePullLayerProgress", status=1, offset=10, total=10)  # DOWNLOAD_COMPLETE
    progress = w.message("ImageServicePullProgress", layer_id="0123456789ab", progress=layer)
    rec.replies["Pull"] = lambda reqs: [
        w.message("ImageServicePullResponse", pull_progress=progress),
        w.message("ImageServicePullResponse", name="example.com/app@sha256:" + "cd" * 32),
    ]
    r = run_imagectl("--socket", sock, "pull", "example.com/app:v1")
    assert r.rc == 0, r.err
    assert r.lines == [
        "layer 0123456789ab download complete",
        "pulled image example.com/app@sha256:" + "cd" * 32,
    ]
    method, [request] = rec.calls[-1]
    f = w.fields_by_name("ImageServicePullRequest", request)
    assert method == "Pull" and w.text(f, "image_ref") == "example.com/app:v1"  # field 3, not 2
    assert the_instance(f) == w.TALOSCTL_INSTANCES["cri"]


def test_remove_request(raw: tuple[RawServer, str]) -> None:
    rec, sock = raw
    rec.replies["Remove"] = lambda reqs: b""  # google.protobuf.Empty
    r = run_imagectl("--socket", sock, "-n", "inmem", "rm", "example.com/app:v1")
    assert r.rc == 0, r.err
    method, [request] = rec.calls[-1]
    f = w.fields_by_name("ImageServiceRemoveRequest", request)
    assert method == "Remove" and w.text(f, "image_ref") == "example.com/app:v1"
    assert the_instance(f) == w.TALOSCTL_INSTANCES["inmem"]


def test_verify_request_and_response(raw: tuple[RawServer, str]) -> None:
    rec, sock = raw
    pinned = "ghcr.io/org/app@sha256:" + "ef" * 32
    rec.replies["Verify"] = lambda reqs: w.message(
        "ImageServiceVerifyResponse", verified=1, message="verified via bundle", digested_image_ref=pinned
    )
    r = run_imagectl(
        "--socket", sock, "verify", "ghcr.io/org/app:v1", "-u", "bob", "--password-stdin", "-o", "json",
        input=b"pw\n",
    )  # fmt: skip
    assert r.rc == 0, r.err
    out = json.loads(r.out)
    assert (out["verified"], out["message"], out["digested_image_ref"]) == (
        True,
        "verified via bundle",
        pinned,
    )
    method, [request] = rec.calls[-1]
    f = w.fields_by_name("ImageServiceVerifyRequest", request)
    assert method == "Verify" and w.text(f, "image_ref") == "ghcr.io/org/app:v1"
    creds = w.one(f, "credentials")
    assert isinstance(creds, bytes)
    c = w.fields_by_name("ImageServiceCredentials", creds)
    assert (w.text(c, "host"), w.text(c, "username"), w.text(c, "password")) == ("ghcr.io", "bob", "pw")
