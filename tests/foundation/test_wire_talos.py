"""The daemon as a Talos client sees it: every request written byte by byte, every answer decoded by hand.

Nothing here uses the project's stubs to talk to the daemon: requests are encoded with
`tests.support.wire` from the field numbers of Talos's published proto, and responses are decoded
the same way. A wrong number in `protos/` makes these tests fail instead of agreeing with itself
(as `common.Data`'s did: a Talos client's Import chunks arrived as zero bytes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from tests.reliability.hygiene import inspect
from tests.support import archives
from tests.support import wire as w
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

CHUNK = 32 * 1024  # talosctl-style clients send 4-32 KiB chunks
CRI = w.instance(w.DRIVER["CRI"], w.NAMESPACE["NS_CRI"])


def _method(name: str) -> str:
    return f"/machine.ImageService/{name}"


def talos_import(daemon: DaemonProcess, data: bytes, *, chunk_field: str = "bytes") -> str:
    """Import as a Talos client: the instance first, then `common.Data` chunks, all hand-encoded."""
    msgs = [w.message("ImageServiceImportRequest", containerd=CRI)]
    for i in range(0, len(data), CHUNK):
        chunk = w.field(w.number("Data", chunk_field), data[i : i + CHUNK])
        msgs.append(w.message("ImageServiceImportRequest", image_chunk=chunk))
    raw = daemon.channel.stream_unary(_method("Import"))(iter(msgs), timeout=120)
    return w.text(w.fields_by_name("ImageServiceImportResponse", raw), "name")


def test_hand_encoded_docker_save_import_runs(daemon: DaemonProcess, containerd: PrivateContainerd) -> None:
    marker = f"talos-docker-{uuid.uuid4().hex[:8]}"
    img = archives.simple_image(marker, docker=True)
    name = talos_import(daemon, archives.docker_archive([([f"wire.test/talos/{marker}:v1"], img)]))
    assert name == f"wire.test/talos/{marker}:v1"
    out = containerd.ctr("run", "--rm", name, f"t-{marker}", namespace="k8s.io", timeout=120).stdout
    assert marker in out


def test_hand_encoded_oci_import_runs(daemon: DaemonProcess, containerd: PrivateContainerd) -> None:
    marker = f"talos-oci-{uuid.uuid4().hex[:8]}"
    img = archives.simple_image(marker)
    name = talos_import(daemon, archives.oci_archive([(f"wire.test/talos/{marker}:v1", img)]))
    assert name == f"wire.test/talos/{marker}:v1"
    out = containerd.ctr("run", "--rm", name, f"t-{marker}", namespace="k8s.io", timeout=120).stdout
    assert marker in out


def test_chunks_in_field_1_are_refused_and_leave_nothing(
    daemon: DaemonProcess, containerd: PrivateContainerd
) -> None:
    """What imagectl before the fix sent: the archive in `Data` field 1, which is Talos's `metadata`."""
    marker = f"field1-{uuid.uuid4().hex[:8]}"
    name = f"wire.test/talos/{marker}:v1"
    data = archives.oci_archive([(name, archives.simple_image(marker))])
    with pytest.raises(grpc.RpcError) as e:
        talos_import(daemon, data, chunk_field="metadata")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 2" in (e.value.details() or "") and "field 1" in (e.value.details() or "")
    assert name not in containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout
    report = inspect(containerd.socket, "k8s.io")
    assert report.leases == [] and report.ingests == [], report


def test_a_chunk_that_parses_as_metadata_is_refused(daemon: DaemonProcess) -> None:
    """Field 1 bytes that happen to be a valid Metadata message are refused all the same."""
    chunk = w.field(w.number("Data", "metadata"), w.message("Metadata", hostname="node-1"))
    msgs = [
        w.message("ImageServiceImportRequest", containerd=CRI),
        w.message("ImageServiceImportRequest", image_chunk=chunk),
    ]
    with pytest.raises(grpc.RpcError) as e:
        daemon.channel.stream_unary(_method("Import"))(iter(msgs), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 2" in (e.value.details() or "")


def test_list_remove_by_hand(daemon: DaemonProcess, containerd: PrivateContainerd) -> None:
    marker = f"list-{uuid.uuid4().hex[:8]}"
    name = f"wire.test/talos/{marker}:v1"
    img = archives.simple_image(marker)
    containerd.ctr("images", "import", "-", namespace="k8s.io", input=archives.oci_archive([(name, img)]))

    request = w.message("ImageServiceListRequest", containerd=CRI)
    listed = {}
    for raw in daemon.channel.unary_stream(_method("List"))(request, timeout=60):
        f = w.fields_by_name("ImageServiceListResponse", raw)
        listed[w.text(f, "name")] = f
    rec = listed[name]
    assert w.text(rec, "digest") == img.digest
    size = w.one(rec, "size")
    assert isinstance(size, int) and size == len(img.manifest) + len(img.config) + sum(
        len(la.blob) for la in img.layers
    )
    created = w.one(rec, "created_at")
    assert isinstance(created, bytes)
    seconds = w.decode(created)[0]  # google.protobuf.Timestamp: seconds = 1
    assert seconds.num == 1 and isinstance(seconds.value, int) and seconds.value > 1_700_000_000

    request = w.message("ImageServiceRemoveRequest", containerd=CRI, image_ref=name)
    assert daemon.channel.unary_unary(_method("Remove"))(request, timeout=60) == b""  # google.protobuf.Empty
    assert name not in containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout


@pytest.fixture(scope="module")
def signed(containerd: PrivateContainerd) -> Iterator[tuple[DaemonProcess, Registry, str, str]]:
    """A daemon with a key rule, and an image signed with that key in a registry."""
    reg = Registry()
    ps = PrivateSigstore(seed=b"talos-wire")
    key = ps.static_key()
    rules = [{"image": f"{reg.host}/wire/*", "publicKey": {"certificate": key.public_pem.decode()}}]
    d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
    d.start()
    try:
        img = archives.simple_image(f"wire-{uuid.uuid4().hex[:8]}")
        digest = archives.push(reg, "wire/app", "v1", img)
        sig = ps.sign_legacy(digest, f"{reg.host}/wire/app", key, tlog=False)
        OciPusher(reg).push_legacy_signatures("wire/app", digest, [sig])
        yield d, reg, f"{reg.host}/wire/app", digest
    finally:
        d.stop()
        reg.close()


def test_verify_by_hand(signed: tuple[DaemonProcess, Registry, str, str]) -> None:
    d, reg, repo, digest = signed
    creds = w.message("ImageServiceCredentials", host=reg.host, username="nobody", password="unused")
    request = w.message("ImageServiceVerifyRequest", image_ref=f"{repo}:v1", credentials=creds)
    raw = d.channel.unary_unary(_method("Verify"))(request, timeout=60)
    f = w.fields_by_name("ImageServiceVerifyResponse", raw)
    assert w.one(f, "verified") == 1
    assert w.text(f, "message").startswith("verified via legacy signature")
    assert w.text(f, "digested_image_ref") == f"{repo}@{digest}"

    # No rule matches: verified=false is proto3's default, so it is absent from the wire.
    raw = d.channel.unary_unary(_method("Verify"))(
        w.message("ImageServiceVerifyRequest", image_ref="other.test/none/app:v1"), timeout=60
    )
    f = w.fields_by_name("ImageServiceVerifyResponse", raw)
    assert "verified" not in f and w.text(f, "message") == "no matched rule"


def test_pull_by_hand(
    signed: tuple[DaemonProcess, Registry, str, str], containerd: PrivateContainerd
) -> None:
    d, _, repo, digest = signed
    request = w.message("ImageServicePullRequest", containerd=CRI, image_ref=f"{repo}:v1")
    names, layers = [], set()
    for raw in d.channel.unary_stream(_method("Pull"))(request, timeout=120):
        f = w.fields_by_name("ImageServicePullResponse", raw)
        if "name" in f:
            names.append(w.text(f, "name"))
            continue
        progress = w.one(f, "pull_progress")
        assert isinstance(progress, bytes)
        p = w.fields_by_name("ImageServicePullProgress", progress)
        layers.add(w.text(p, "layer_id"))
        layer = w.one(p, "progress")
        assert isinstance(layer, bytes)
        w.fields_by_name("ImageServicePullLayerProgress", layer)  # only the contract's fields
    assert names == [f"{repo}@{digest}"]
    assert layers and all(len(x) == 12 for x in layers)
    assert f"{repo}:v1" in containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout
