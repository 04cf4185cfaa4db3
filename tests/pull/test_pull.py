"""Pull end to end: real registry -> daemon -> real containerd, checked with ctr and CRI."""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import threading
import time
import uuid

import grpc
import pytest

from imaged.pb.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from imaged.pb.machine import image_pb2
from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, SYSTEM, DaemonProcess
from tests.support.images import push_multiplatform_image, push_test_image
from tests.support.registry import Registry

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True

Status = image_pb2.ImageServicePullLayerProgress.Status


def pull(daemon: DaemonProcess, ref: str, inst=CRI, timeout: float = 300):  # type: ignore[no-untyped-def]
    """(final name, progress messages) of a Pull."""
    progress, name = [], None
    for msg in daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=inst, image_ref=ref), timeout=timeout
    ):
        if msg.WhichOneof("response") == "name":
            name = msg.name
        else:
            progress.append(msg.pull_progress)
    return name, progress


def run(cd: PrivateContainerd, ns: str, image: str) -> str:
    cid = f"t-{uuid.uuid4().hex[:8]}"
    return cd.ctr("run", "--rm", image, cid, namespace=ns, timeout=120).stdout


def leases(cd: PrivateContainerd, ns: str) -> list[str]:
    with grpc.insecure_channel(f"unix:{cd.socket}") as ch:
        resp = leases_pb2_grpc.LeasesStub(ch).List(
            leases_pb2.ListRequest(), metadata=(("containerd-namespace", ns),)
        )
    return [le.id for le in resp.leases if le.id.startswith("imaged-")]


def ingests(cd: PrivateContainerd, ns: str) -> list[str]:
    return cd.ctr("content", "active", namespace=ns).stdout.splitlines()[1:]


@pytest.fixture(scope="module")
def oci_image(registry: Registry) -> tuple[str, str]:
    digest = push_test_image(registry, "pull/oci", "v1", layers=3)
    return f"{registry.host}/pull/oci:v1", digest


def test_pull_runs_and_is_seen_by_cri(daemon, containerd, oci_image) -> None:  # type: ignore[no-untyped-def]
    ref, digest = oci_image
    name, _progress = pull(daemon, ref)
    repo = ref.rsplit(":", 1)[0]
    assert name == f"{repo}@{digest}"
    assert "hello" in run(containerd, "k8s.io", ref)
    images = {img.id: img for img in cri.list_images(containerd.socket)}
    matching = [img for img in images.values() if ref in img.repo_tags]
    assert matching, f"CRI does not list {ref}: {images}"
    assert f"{repo}@{digest}" in matching[0].repo_digests
    listed = {r.name: r for r in daemon.images.List(image_pb2.ImageServiceListRequest(containerd=CRI))}
    for n in (ref, f"{repo}@{digest}", matching[0].id):
        assert n in listed
        assert listed[n].labels["io.cri-containerd.image"] == "managed"
        assert listed[n].digest == digest
    assert leases(containerd, "k8s.io") == []


def test_progress_per_layer(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    push_test_image(registry, "pull/progress", "v1", layers=3)
    ref = f"{registry.host}/pull/progress:v1"
    name, progress = pull(daemon, ref, SYSTEM)
    assert name
    by_layer: dict[str, list] = {}  # type: ignore[type-arg]
    for p in progress:
        assert len(p.layer_id) == 12
        by_layer.setdefault(p.layer_id, []).append(p.progress)
    assert len(by_layer) == 3  # busybox + 2 extra layers
    for states in by_layer.values():
        offsets = [s.offset for s in states if s.status in (Status.DOWNLOADING, Status.DOWNLOAD_COMPLETE)]
        assert offsets == sorted(offsets), "offsets went backwards"
        assert states[-1].status == Status.EXTRACT_COMPLETE
        assert Status.DOWNLOAD_COMPLETE in [s.status for s in states]
        complete = next(s for s in states if s.status == Status.DOWNLOAD_COMPLETE)
        assert complete.offset == complete.total > 0
        # Only changes are sent.
        assert all(a != b for a, b in itertools.pairwise(states))
    # A second image sharing a layer with one pulled before reports that layer as already there.
    from tests.support import archives

    archives.push(registry, "pull/progress-a", "v1", archives.simple_image("progress-a"))
    pull(daemon, f"{registry.host}/pull/progress-a:v1", SYSTEM)
    archives.push(registry, "pull/progress-b", "v1", archives.simple_image("progress-b"))
    _, progress2 = pull(daemon, f"{registry.host}/pull/progress-b:v1", SYSTEM)
    finals = {}
    for p in progress2:
        finals[p.layer_id] = p.progress.status
    assert Status.ALREADY_EXISTS in finals.values()
    assert any(s == Status.EXTRACT_COMPLETE for s in finals.values())
    # Pulling again: present and unpacked, so it returns at once without progress.
    name2, progress3 = pull(daemon, ref, SYSTEM)
    assert name2 == name and progress3 == []


def test_pull_docker_schema2_system_namespace(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    digest = push_test_image(registry, "pull/docker", "v2", schema="docker")
    ref = f"{registry.host}/pull/docker:v2"
    name, _ = pull(daemon, ref, SYSTEM)
    assert name == f"{registry.host}/pull/docker@{digest}"
    info = containerd.ctr("images", "ls", namespace="system").stdout
    assert "application/vnd.docker.distribution.manifest.v2+json" in info
    assert "hello" in run(containerd, "system", ref)


def test_id_alias_per_namespace(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    """k8s.io: CRI's image id, sha256:<config>; system: Talos's alias, sha256:<manifest digest>."""
    img = archives.simple_image(f"alias-{uuid.uuid4().hex[:8]}")
    archives.push(registry, "pull/alias", "v1", img)
    ref = f"{registry.host}/pull/alias:v1"
    repo_digest = f"{registry.host}/pull/alias@{img.digest}"
    for inst, ns, alias, other in (
        (CRI, "k8s.io", img.config_digest, img.digest),
        (SYSTEM, "system", img.digest, img.config_digest),
    ):
        pull(daemon, ref, inst)
        names = set(containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split())
        assert {ref, repo_digest, alias} <= names and other not in names, (ns, names)


def test_pull_multiplatform_picks_host(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    img = push_multiplatform_image(registry, "pull/multi", "v1")
    ref = f"{registry.host}/pull/multi:v1"
    name, _progress = pull(daemon, ref, SYSTEM)
    assert name == f"{registry.host}/pull/multi@{img.index_digest}"
    assert "hello" in run(containerd, "system", ref)


def test_pull_labels_the_host_manifest_by_its_position_in_the_index(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    # The host's manifest second in the index: its GC label is m.1, as Import labels it. Pulling
    # under m.0 (its place among those fetched) repointed the label that holds the other platform's
    # manifest in an image imported with all of them.
    from tests.support import archives
    from tests.support.sigstore import OciPusher

    other = archives.Image([archives.layer({"etc/arm": b"fake"})], architecture="arm64", variant="v8")
    host = archives.simple_image("index-position")
    archives.push(registry, "pull/position", "arm", other)
    archives.push(registry, "pull/position", "host", host)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": archives.OCI_INDEX,
            "manifests": [other.descriptor(), host.descriptor()],
        }
    ).encode()
    pushed = OciPusher(registry).put_manifest("pull/position", "v1", index, archives.OCI_INDEX)
    pull(daemon, f"{registry.host}/pull/position:v1", SYSTEM)
    labels = asyncio.run(_content_labels(containerd, "system", pushed.digest))
    assert labels.get("containerd.io/gc.ref.content.m.1") == host.digest
    assert "containerd.io/gc.ref.content.m.0" not in labels


async def _content_labels(cd: PrivateContainerd, namespace: str, digest: str) -> dict[str, str]:
    from imaged.containerd.client import Containerd
    from imaged.containerd.content import ContentStore

    client = Containerd(cd.socket)
    try:
        info = await ContentStore(client.ns(namespace)).info(digest)
    finally:
        await client.close()
    assert info is not None, digest
    return info.labels


def test_concurrent_pulls_download_each_blob_once(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    push_test_image(registry, "pull/concurrent", "v1", layers=2)
    ref = f"{registry.host}/pull/concurrent:v1"
    results: list[object] = []

    def one() -> None:
        try:
            results.append(pull(daemon, ref, SYSTEM)[0])
        except grpc.RpcError as e:
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(isinstance(r, str) for r in results), results
    gets = [(p, s) for m, p, s in registry.requests() if m == "GET" and "/pull/concurrent/blobs/" in p]
    blobs = [p.split("/blobs/")[1].split("?")[0] for p, _ in gets]
    assert blobs, "no blob was fetched"
    assert len(blobs) == len(set(blobs)), f"a blob was downloaded twice: {blobs}"


def test_missing_image_not_found(daemon, registry) -> None:  # type: ignore[no-untyped-def]
    for ref in (f"{registry.host}/pull/nope:v1", f"{registry.host}/pull/oci:nope"):
        with pytest.raises(grpc.RpcError) as e:
            pull(daemon, ref)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert registry.host in e.value.details()


def test_invalid_reference(daemon) -> None:  # type: ignore[no-untyped-def]
    for ref in ("", "upper/CASE", "a b", "x@sha256:123", "host:5000/a::b"):
        with pytest.raises(grpc.RpcError) as e:
            pull(daemon, ref)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_corrupted_layer_data_loss(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    from tests.support import archives

    # A layer no other test has, so it must be downloaded (not found in containerd already).
    image = archives.simple_image(f"corrupt-{uuid.uuid4().hex}")
    archives.push(registry, "pull/corrupt", "v1", image)
    ref = f"{registry.host}/pull/corrupt:v1"
    layer = image.layers[-1].digest
    # Flip a byte of that layer in the registry's storage (the registry serves it as is).
    blob = (
        pathlib.Path(registry.dir) / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    )
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS
    assert ref.rsplit(":", 1)[0] in e.value.details()
    assert ref not in containerd.ctr("images", "ls", "-q", namespace="system").stdout
    assert layer not in containerd.ctr("content", "ls", "-q", namespace="system").stdout
    assert leases(containerd, "system") == []
    assert not [i for i in ingests(containerd, "system") if layer[7:] in i]


def test_cancel_mid_download_then_resume(daemon, containerd, registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from tests.support import archives

    image = archives.Image(
        [archives.busybox_layer(), archives.layer({"big": os.urandom(96 << 20)}, compress=False)]
    )
    big = archives.push(registry, "pull/big", "v1", image)
    ref = f"{registry.host}/pull/big:v1"
    call = daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=300
    )
    for msg in call:
        if msg.pull_progress.progress.status == Status.DOWNLOADING and msg.pull_progress.progress.offset > 0:
            call.cancel()
            break
    deadline = time.monotonic() + 10
    while leases(containerd, "system") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leases(containerd, "system") == []
    assert ref not in containerd.ctr("images", "ls", "-q", namespace="system").stdout
    name, _progress = pull(daemon, ref, SYSTEM)
    assert name.endswith(big)
    assert ingests(containerd, "system") == []
    assert leases(containerd, "system") == []


def content_labels(cd: PrivateContainerd, ns: str) -> dict[str, str]:
    """digest -> the LABELS column of `ctr content ls`."""
    out = {}
    for line in cd.ctr("content", "ls", namespace=ns).stdout.splitlines()[1:]:
        cols = line.split()
        out[cols[0]] = cols[-1] if "=" in cols[-1] else ""
    return out


def test_layers_committed_with_uncompressed_label(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    """The diffID label is set at commit (no label update per layer), as containerd's unpacker leaves it."""
    from tests.support import archives

    image = archives.Image([archives.busybox_layer(), archives.layer({f"m-{uuid.uuid4().hex}": b"x" * 100})])
    archives.push(registry, "pull/labels", "v1", image)
    pull(daemon, f"{registry.host}/pull/labels:v1", SYSTEM)
    labels = content_labels(containerd, "system")
    for la in image.layers:
        assert f"containerd.io/uncompressed={la.diff_id}" in labels[la.digest]
    assert f"containerd.io/gc.ref.content.l.1={image.layers[1].digest}" in labels[image.digest]


def test_wrong_diff_id_is_data_loss_and_leaves_nothing(daemon, containerd, registry) -> None:  # type: ignore[no-untyped-def]
    """A config whose diffID does not match the layer: refused, no record, no lease, no blob."""
    from tests.support import archives

    real = archives.layer({f"real-{uuid.uuid4().hex}": b"y" * 100})
    claimed = archives.tar_bytes({"something-else": b"z"})
    image = archives.Image([archives.busybox_layer(), archives.Layer(claimed, real.blob, real.media_type)])
    archives.push(registry, "pull/diffid", "v1", image)
    ref = f"{registry.host}/pull/diffid:v1"
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, SYSTEM)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS
    assert "image config says" in e.value.details()
    assert ref not in containerd.ctr("images", "ls", "-q", namespace="system").stdout
    assert leases(containerd, "system") == []
    deadline = time.monotonic() + 10
    while real.digest in content_labels(containerd, "system") and time.monotonic() < deadline:
        time.sleep(0.1)  # the GC after the lease's deletion is asynchronous
    assert real.digest not in content_labels(containerd, "system")


def test_a_tag_is_asked_again_and_offline_the_recorded_image_serves(daemon, containerd) -> None:  # type: ignore[no-untyped-def]
    # The reference returned whatever a tag recorded here named, so a re-pushed tag never arrived.
    # Now the registry is asked; only when it cannot be reached is the recorded image used.
    with Registry() as reg:
        repo = f"{reg.host}/pull/moving"
        first = push_test_image(reg, "pull/moving", "v1")
        assert pull(daemon, f"{repo}:v1", SYSTEM)[0] == f"{repo}@{first}"
        second = push_test_image(reg, "pull/moving", "v1", layers=2)
        assert second != first
        name, progress = pull(daemon, f"{repo}:v1", SYSTEM)
        assert name == f"{repo}@{second}" and progress
        listed = containerd.ctr("images", "ls", namespace="system").stdout.splitlines()
        assert any(line.startswith(f"{repo}:v1 ") and second in line for line in listed)
        assert "hello" in run(containerd, "system", f"{repo}:v1")
        # Unchanged: nothing is downloaded.
        assert pull(daemon, f"{repo}:v1", SYSTEM) == (f"{repo}@{second}", [])
        # A label from an earlier verification (a rule since changed) is not kept by a pull that
        # verified nothing.
        containerd.ctr("images", "label", f"{repo}:v1", "imaged.dev/verified=earlier", namespace="system")
        reg.stop()
        assert pull(daemon, f"{repo}:v1", SYSTEM) == (f"{repo}@{second}", [])
        assert "the registry is not reachable" in daemon.logs()
        listed = containerd.ctr("images", "ls", namespace="system").stdout.splitlines()
        assert not [line for line in listed if line.startswith(repo) and "imaged.dev/verified" in line]
        assert pull(daemon, f"{repo}@{first}", SYSTEM) == (f"{repo}@{first}", [])
        with pytest.raises(grpc.RpcError) as err:
            pull(daemon, f"{repo}:never-pulled", SYSTEM)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
