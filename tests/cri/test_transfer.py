"""machine.ImageService Pull into k8s.io: containerd's CRI moves the bytes, imaged reports per-layer
progress from what containerd holds, records and labels as before; imaged's own pipeline where
containerd cannot be told what imaged would do."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid

import grpc
import pytest
import yaml

from imaged import errors
from imaged.containerd.client import Containerd, Namespaced
from imaged.containerd.images import Image, ImageStore, Target
from imaged.cri import progress as cri_progress
from imaged.cri import upstream
from imaged.oci.manifest import Descriptor
from imaged.oci.platform import host_platform
from imaged.pb.machine import image_pb2
from imaged.pb.runtime.v1 import api_pb2
from imaged.pull.progress import Progress
from imaged.registry.reference import parse
from tests.cri.conftest import Env, cri_transfer
from tests.cri.test_pull_image import layer_gets, records
from tests.pull.test_pull import ingests, leases, pull
from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher

Status = image_pb2.ImageServicePullLayerProgress.Status


def fetched_by(reg: Registry, digest: str) -> set[str]:
    """User agents (containerd/..., imaged/...) of the GETs of blob `digest` in the access log
    (waited for a moment: the registry writes a line once its response is out)."""
    deadline = time.monotonic() + 5
    while True:
        agents = set()
        for line in reg.log_path.read_text(errors="replace").splitlines():
            if '"GET ' in line and (f"/blobs/{digest} " in line or f"/blobs/{digest}?" in line):
                agents.add(line.rstrip().rsplit('"', 2)[-2].split("/")[0])
        if agents or time.monotonic() > deadline:
            return agents
        time.sleep(0.05)


def test_pull_into_k8s_io_is_made_by_containerds_cri_with_progress(
    env: Env, containerd: PrivateContainerd
) -> None:
    layers = [archives.busybox_layer()] + [
        archives.layer({f"data{i}": os.urandom(6 << 20)}, compress=False) for i in range(3)
    ]
    img = archives.Image(layers, cmd=["/bin/echo", "transferred"])
    digest = env.push_signed(env.reg, "signed/transfer", "v1", img)
    ref = f"{env.reg.host}/signed/transfer:v1"
    name, progress = pull(env.daemon, ref, CRI)
    assert name == f"{env.reg.host}/signed/transfer@{digest}"
    assert fetched_by(env.reg, layers[-1].digest) == {"containerd"}
    # Records and labels as imaged's own pull makes them; containerd's CRI knows the tag.
    found = records(containerd)
    for n in (ref, name, img.config_digest):
        assert found[n]["io.cri-containerd.image"] == "managed"
        assert found[n]["imaged.dev/verified"].startswith("verified via legacy signature")
    assert ref in cri.image_status(containerd.socket, ref).image.repo_tags
    # One stream of states per layer, ending extracted; offsets only grow; only changes sent.
    by_layer: dict[str, list[image_pb2.ImageServicePullLayerProgress]] = {}
    for p in progress:
        by_layer.setdefault(p.layer_id, []).append(p.progress)
    assert set(by_layer) == {la.digest.split(":")[1][:12] for la in layers}
    for lid, states in by_layer.items():
        statuses = [s.status for s in states]
        assert statuses[-1] in (Status.EXTRACT_COMPLETE, Status.ALREADY_EXISTS), (lid, statuses)
        offsets = [s.offset for s in states if s.status in (Status.DOWNLOADING, Status.DOWNLOAD_COMPLETE)]
        assert offsets == sorted(offsets)
        assert all(a != b for a, b in itertools.pairwise(states))
    big = [by_layer[la.digest.split(":")[1][:12]] for la in layers[1:]]
    assert all(Status.DOWNLOAD_COMPLETE in [s.status for s in states] for states in big)
    assert all(states[-1].status == Status.EXTRACT_COMPLETE for states in big)
    # Again: recorded and unpacked, nothing to do and nothing said.
    assert pull(env.daemon, ref, CRI) == (name, [])
    assert leases(containerd, "k8s.io") == []
    # A second image over the same base layers reports them as already there.
    more = archives.Image([*layers, archives.layer({"extra": b"x"})], cmd=["/bin/echo", "more"])
    env.push_signed(env.reg, "signed/transfer-more", "v1", more)
    _, progress2 = pull(env.daemon, f"{env.reg.host}/signed/transfer-more:v1", CRI)
    finals = {p.layer_id: p.progress.status for p in progress2}
    assert [finals[la.digest.split(":")[1][:12]] for la in layers] == [Status.ALREADY_EXISTS] * len(layers)
    assert finals[more.layers[-1].digest.split(":")[1][:12]] == Status.EXTRACT_COMPLETE


def test_a_cancelled_pull_into_k8s_io_leaves_no_lease_and_resumes(
    env: Env, containerd: PrivateContainerd
) -> None:
    big = archives.Image(
        [archives.busybox_layer(), archives.layer({"big": os.urandom(96 << 20)}, compress=False)]
    )
    archives.push(env.reg, "open/big", "v1", big)
    ref = f"{env.reg.host}/open/big:v1"
    call = env.daemon.images.Pull(
        image_pb2.ImageServicePullRequest(containerd=CRI, image_ref=ref), timeout=300
    )
    for msg in call:
        p = msg.pull_progress.progress
        if p.status == Status.DOWNLOADING and p.offset > 0:
            call.cancel()
            break
    deadline = time.monotonic() + 10
    while leases(containerd, "k8s.io") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leases(containerd, "k8s.io") == []
    assert not [n for n in records(containerd) if "open/big" in n]
    before = len(env.reg.requests())
    name, _ = pull(env.daemon, ref, CRI)
    assert name.endswith(big.digest)
    resumed = layer_gets(env.reg, before, big.layers[-1].digest)
    assert resumed and all(r[2] == 206 for r in resumed), resumed
    assert ingests(containerd, "k8s.io") == []


def test_a_failed_pull_into_k8s_io_says_why(env: Env, containerd: PrivateContainerd) -> None:
    img = archives.simple_image("gone-blob")
    archives.push(env.reg, "open/gone", "v1", img)
    # The registry loses the layer after the manifest was written.
    layer = img.layers[-1].digest
    blob = env.reg.dir / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    blob.unlink()
    with pytest.raises(grpc.RpcError) as e:
        pull(env.daemon, f"{env.reg.host}/open/gone:v1", CRI)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    assert "error pulling image" in (e.value.details() or "")
    assert leases(containerd, "k8s.io") == []
    assert not [n for n in records(containerd) if "open/gone" in n]


def test_a_corrupt_layer_is_data_loss_and_does_not_stick(env: Env, containerd: PrivateContainerd) -> None:
    img = archives.simple_image(f"corrupt-{uuid.uuid4().hex}")
    archives.push(env.reg, "open/corrupt", "v1", img)
    ref = f"{env.reg.host}/open/corrupt:v1"
    layer = img.layers[-1].digest
    blob = env.reg.dir / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    good = blob.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    blob.write_bytes(bytes(bad))
    with pytest.raises(grpc.RpcError) as e:
        pull(env.daemon, ref, CRI)
    assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value.details()
    assert leases(containerd, "k8s.io") == []
    assert not [i for i in ingests(containerd, "k8s.io") if layer[7:] in i]
    assert layer not in containerd.ctr("content", "ls", "-q", namespace="k8s.io").stdout
    # Once the registry serves the right bytes, the next pull succeeds (nothing bad was kept).
    blob.write_bytes(good)
    name, _ = pull(env.daemon, ref, CRI)
    assert name.endswith(img.digest)


@pytest.mark.parametrize("why", ["configured", "mirror"])
def test_imaged_pulls_itself_where_containerd_cannot_be_told(
    env: Env, containerd: PrivateContainerd, why: str
) -> None:
    img = archives.simple_image(f"own-pipeline-{why}")
    archives.push(env.reg, f"open/own-{why}", "v1", img)
    ref = f"{env.reg.host}/open/own-{why}:v1"
    cfg: dict[str, object] = (
        {"pull": {"cri_transfer": "imaged"}}
        if why == "configured"
        # The registry is its own mirror here: a mirror is all that matters (containerd is not told).
        else {"registries": {"hosts": {env.reg.host: {"mirrors": [f"http://{env.reg.host}"]}}}}
    )
    d = DaemonProcess(containerd.socket, cfg)
    d.start()
    try:
        name, progress = pull(d, ref, CRI)
    finally:
        d.stop()
    assert name.endswith(img.digest)
    assert fetched_by(env.reg, img.layers[-1].digest) == {"imaged"}
    assert progress and progress[-1].progress.status in (Status.EXTRACT_COMPLETE, Status.ALREADY_EXISTS)
    assert ref in cri.image_status(containerd.socket, ref).image.repo_tags


def test_without_containerds_cri_imaged_pulls_itself(env: Env) -> None:
    """A containerd without the CRI plugin: Pull into k8s.io and PullImage are imaged's own; what
    only containerd's CRI can answer says so (UNIMPLEMENTED, containerd's answer)."""
    bare = PrivateContainerd()
    bare.config.write_text('disabled_plugins = ["io.containerd.grpc.v1.cri"]\n' + bare.config.read_text())
    bare.start()
    img = archives.simple_image("no-cri-plugin")
    archives.push(env.reg, "open/no-cri", "v1", img)
    ref = f"{env.reg.host}/open/no-cri:v1"
    d = DaemonProcess(bare.socket)
    d.config["listen"]["cri"] = {"path": str(d.dir / "cri.sock")}
    d.config_path.write_text(yaml.safe_dump(d.config))
    d.start()
    try:
        name, progress = pull(d, ref, CRI)
        assert name.endswith(img.digest) and progress
        assert fetched_by(env.reg, img.layers[-1].digest) == {"imaged"}
        bare.ctr("images", "rm", "--sync", ref, name, img.config_digest, namespace="k8s.io")
        with cri.images(str(d.dir / "cri.sock")) as stub:
            req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
            assert stub.PullImage(req, timeout=120).image_ref == img.config_digest
            with pytest.raises(grpc.RpcError) as e:
                stub.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        listed = bare.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
        assert {ref, name, img.config_digest} <= set(listed)
    finally:
        d.stop()
        bare.destroy()


def _push_index_of(reg: Registry, repo: str, img: archives.Image) -> str:
    """An OCI index wrapping `img`'s manifest, pushed as repo:v1: another digest, the same config,
    so the same CRI image id."""
    archives.push(reg, repo, "v1", img)
    p = host_platform()
    entry = {
        "mediaType": archives.OCI_MANIFEST,
        "digest": img.digest,
        "size": len(img.manifest),
        "platform": {
            "os": p.os,
            "architecture": p.architecture,
            **({"variant": p.variant} if p.variant else {}),
        },
    }
    body = json.dumps({"schemaVersion": 2, "mediaType": archives.OCI_INDEX, "manifests": [entry]}).encode()
    return OciPusher(reg).put_manifest(repo, "v1", body, archives.OCI_INDEX).digest


def _target(records: dict[str, Image], name: str) -> str:
    return records[name].target.digest if name in records else ""


async def _all_records(ns: Namespaced) -> dict[str, Image]:
    return {r.name: r for r in await ImageStore(ns).list()}


@pytest.mark.parametrize("moved", ["id", "repo-digest"])
def test_records_never_repoint_or_label_a_digest_other_than_the_pinned_one(
    env: Env, containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch, moved: str
) -> None:
    """Between containerd's pull of `repo@<pinned>` and imaged's records, a concurrent pull of an
    index wrapping the same manifest makes containerd's CRI point the id `sha256:<config>` at the
    index. The records step read its target from the id: it wrote the tag and the verified labels
    for the index's digest. Now the target is `repo@<pinned>`'s; if even that names another digest,
    the pull fails (UNAVAILABLE) and labels nothing."""
    img = archives.simple_image(f"pinned-{moved}-{uuid.uuid4().hex}")
    repo = f"open/pinned-{moved}"
    index = _push_index_of(env.reg, f"{repo}-index", img)
    archives.push(env.reg, repo, "v1", img)
    ref = parse(f"{env.reg.host}/{repo}:v1@{img.digest}")
    labels = {"imaged.dev/verified": "verified via a test", "imaged.dev/verified-rule": "rule-x"}
    real_pull = upstream.pull

    async def pull_then_race(ns: Namespaced, request: api_pb2.PullImageRequest) -> str:
        image_id = await real_pull(ns, request)
        other = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=f"{env.reg.host}/{repo}-index:v1"))
        assert await real_pull(ns.with_lease(None), other) == image_id
        if moved == "repo-digest":  # (nothing does this; a record naming a digest is that digest's)
            store = ImageStore(ns)
            found = await store.get(ref.pinned())
            assert found is not None
            moved_to = Target(archives.OCI_INDEX, index, found.target.size)
            assert await store.update(ref.pinned(), moved_to, found.labels) is not None
        return image_id

    async def scenario() -> None:
        cd = Containerd(containerd.socket)
        ns = cd.ns("k8s.io")
        transfer = cri_transfer()
        try:
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref.pinned()))
            monkeypatch.setattr(upstream, "pull", pull_then_race)
            if moved == "id":
                pulled = await transfer.run(ns, ref, request, labels)
                assert pulled.target.digest == img.digest
            else:
                with pytest.raises(errors.Unavailable) as e:
                    await transfer.run(ns, ref, request, labels)
                assert ref.pinned() in e.value.message and index in e.value.message, e.value.message
            monkeypatch.undo()
            found = await _all_records(ns)
            mine = {img.digest, index, img.config_digest}
            labelled = {
                n: r.target.digest
                for n, r in found.items()
                if "imaged.dev/verified" in r.labels and (r.target.digest in mine or n in mine)
            }
            assert index not in labelled.values(), labelled
            assert _target(found, f"{ref.repository}@{index}") in ("", index)
            if moved == "id":
                assert _target(found, f"{ref.repository}:v1") == img.digest
                assert set(labelled) == {f"{ref.repository}:v1", ref.pinned(), img.config_digest}
                assert set(labelled.values()) == {img.digest}
            else:
                assert f"{ref.repository}:v1" not in found, "no tag for a pull that failed"
        finally:
            await cd.close()

    asyncio.run(scenario())


def test_progress_looks_never_walk_the_store(
    env: Env, containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look asks about the layers not done yet, one by one: `Content.List` and `Snapshots.List`
    with filters walk every blob and snapshot of the namespace inside containerd, ten times a
    second during every pull (measured: 20 ms of containerd's CPU a look with 2000 of each)."""
    img = archives.Image(
        [archives.busybox_layer(), archives.layer({"walk": os.urandom(4 << 20)}, compress=False)],
        cmd=["/bin/true"],
    )
    digest = archives.push(env.reg, "open/no-walk", "v1", img)
    streamed: list[str] = []
    real_stream = Namespaced.stream

    def stream(self: Namespaced, method: object, request: object, **kw: object) -> object:
        streamed.append(type(request).__name__)
        return real_stream(self, method, request, **kw)  # type: ignore[arg-type]

    async def scenario() -> list[str]:
        cd = Containerd(containerd.socket)
        transfer = cri_transfer(progress_interval=0.01)
        progress = Progress()
        try:
            ref = parse(f"{env.reg.host}/open/no-walk:v1@{digest}")
            assert await transfer.pull(cd.ns("k8s.io"), ref, progress, {}, None) == ref.pinned()
            progress.close()
            states = []
            while (state := await progress.next()) is not None:
                states.append(state.layer_id)
        finally:
            await cd.close()
        return states

    monkeypatch.setattr(Namespaced, "stream", stream)
    reported = asyncio.run(scenario())
    monkeypatch.undo()
    assert {la.digest[7:19] for la in img.layers} <= set(reported), reported
    walks = [r for r in streamed if r in ("ListContentRequest", "ListSnapshotsRequest")]
    assert not walks, streamed


def test_progress_looks_ask_about_a_window_of_layers(
    env: Env, containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each look asks containerd about at most `WINDOW` layers per kind (the lowest not done yet),
    and the last look about all of them, so every layer still ends in a final state: with one
    `Content.Info` and one `Snapshots.Stat` per layer at every look, 40 small layers cost 80 calls
    ten times a second, CPU the pull itself waited for on a small machine."""
    layers = [archives.busybox_layer()] + [
        archives.layer({f"w{i}": os.urandom(2048)}, compress=True) for i in range(3 * cri_progress.WINDOW)
    ]
    img = archives.Image(layers, cmd=["/bin/true"])
    digest = archives.push(env.reg, "open/window", "v1", img)
    layer_digests = {la.digest for la in img.layers}
    looks: list[list[str]] = []
    real_call = Namespaced.call
    real_look = cri_progress.IngestWatcher.look

    async def call(self: Namespaced, method: object, request: object, **kw: object) -> object:
        kind = type(request).__name__
        if looks and (kind == "StatSnapshotRequest" or getattr(request, "digest", None) in layer_digests):
            looks[-1].append(kind)  # (Info of the manifest and config are not per layer)
        return await real_call(self, method, request, **kw)  # type: ignore[arg-type]

    async def look(self: cri_progress.IngestWatcher, window: int | None = cri_progress.WINDOW) -> None:
        looks.append([f"window={window}"])
        await real_look(self, window)

    async def scenario() -> list[tuple[str, object]]:
        cd = Containerd(containerd.socket)
        transfer = cri_transfer(progress_interval=0.005)
        prog = Progress()
        try:
            ref = parse(f"{env.reg.host}/open/window:v1@{digest}")
            assert await transfer.pull(cd.ns("k8s.io"), ref, prog, {}, None) == ref.pinned()
            prog.close()
            states: list[tuple[str, object]] = []
            while (state := await prog.next()) is not None:
                states.append((state.layer_id, state.status))
        finally:
            await cd.close()
        return states

    monkeypatch.setattr(Namespaced, "call", call)
    monkeypatch.setattr(cri_progress.IngestWatcher, "look", look)
    states = asyncio.run(scenario())
    monkeypatch.undo()
    final = {lid: st for lid, st in states}
    assert set(final) == {la.digest[7:19] for la in img.layers}, final
    assert set(final.values()) <= {Status.EXTRACT_COMPLETE, Status.ALREADY_EXISTS}, final
    windowed, last = looks[:-1], looks[-1]
    assert last[0] == "window=None" and all(w[0] == f"window={cri_progress.WINDOW}" for w in windowed)
    assert windowed, "the pull ended before a single look: nothing was measured"
    for asked in windowed:
        assert asked.count("InfoRequest") <= cri_progress.WINDOW, asked
        assert asked.count("StatSnapshotRequest") <= cri_progress.WINDOW, asked


def test_a_layer_seen_extracted_keeps_its_final_state(env: Env, containerd: PrivateContainerd) -> None:
    """A look can see a layer's snapshot committed before it asked about its blob (the blob
    outside the window, or committed between two calls). When the blob is found next, the layer
    keeps its final state: no DOWNLOAD_COMPLETE after EXTRACT_COMPLETE."""
    img = archives.Image(
        [archives.busybox_layer(), archives.layer({"x": os.urandom(4096)})], cmd=["/bin/true"]
    )
    digest = archives.push(env.reg, "open/seen-extracted", "v1", img)
    started = time.time() - 1  # what the watcher of this pull would have stamped

    async def scenario() -> list[tuple[str, object]]:
        cd = Containerd(containerd.socket)
        try:
            ns = cd.ns("k8s.io")
            ref = parse(f"{env.reg.host}/open/seen-extracted:v1@{digest}")
            assert await cri_transfer().pull(ns, ref, Progress(), {}, None) == ref.pinned()
            watcher = cri_progress.IngestWatcher(
                ns, Descriptor("", digest, 0), "overlayfs", Progress(), started=started
            )
            await watcher.look(window=None)  # every layer done: found downloaded and extracted
            assert watcher.layers is not None
            top = watcher.layers[-1]
            top.fetched = False  # as if its snapshot had been seen before its blob
            watcher.progress = Progress()
            await watcher.look(window=None)
            watcher.progress.close()
            states: list[tuple[str, object]] = []
            while (state := await watcher.progress.next()) is not None:
                states.append((state.layer_id, state.status))
            assert top.fetched, "the blob was found"
            return [st for st in states if st[0] == top.lid]
        finally:
            await cd.close()

    assert asyncio.run(scenario()) == []


@pytest.mark.parametrize("how", ["fails", "cancelled"])
def test_a_failed_records_step_leaves_no_record_of_this_pull(
    env: Env, containerd: PrivateContainerd, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """containerd's CRI made `repo@digest` and `sha256:<config>` for this pull, imaged labelled them,
    then the tag's write failed (or the call was cancelled): the undo kept every record it had
    labelled (updated since made: "another pull's"), so a failed pull left records, verified labels
    and all."""
    img = archives.simple_image(f"undo-{how}-{uuid.uuid4().hex}")
    repo = f"open/undo-{how}"
    archives.push(env.reg, repo, "v1", img)
    ref = parse(f"{env.reg.host}/{repo}:v1@{img.digest}")
    labels = {"imaged.dev/verified": "verified via a test", "imaged.dev/verified-rule": "rule-x"}
    real_put = ImageStore.put
    running: list[asyncio.Task[object]] = []

    async def put(self: ImageStore, name: str, *args: object, **kw: object) -> bool:
        if name == ref.tagged():
            await asyncio.sleep(0.2)  # the other records are written (and labelled) meanwhile
            if how == "fails":
                raise errors.Unavailable("containerd went away")
            running[0].cancel()
            await asyncio.sleep(3600)
        return await real_put(self, name, *args, **kw)  # type: ignore[arg-type]

    async def scenario() -> dict[str, Image]:
        cd = Containerd(containerd.socket)
        ns = cd.ns("k8s.io")
        transfer = cri_transfer()
        try:
            request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref.pinned()))
            monkeypatch.setattr(ImageStore, "put", put)
            running.append(asyncio.create_task(transfer.run(ns, ref, request, labels)))
            with pytest.raises(errors.Unavailable if how == "fails" else asyncio.CancelledError):
                await running[0]
            monkeypatch.undo()
            return await _all_records(ns)
        finally:
            await cd.close()

    found = asyncio.run(scenario())
    left = {n for n in found if n in (ref.tagged(), ref.pinned(), img.config_digest)}
    assert not left, left
    assert leases(containerd, "k8s.io") == []
