"""PullImage on imaged's CRI socket, against the real containerd CRI and registries: the policy first,
the pull pinned, the image recorded as containerd's CRI records it, and runnable by containerd's CRI."""

from __future__ import annotations

import base64
import os
import pathlib
import threading
import time

import grpc
import pytest
import yaml

from imaged.pb.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from imaged.pb.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from imaged.pb.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from imaged.pb.runtime.v1 import api_pb2
from tests.cri.conftest import USERS, Env, Node
from tests.pull.test_pull import ingests, leases
from tests.reliability.faultproxy import Fault, FaultProxy, blob_path
from tests.support import archives, cri
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry


def pull_image(env: Node, image: str, auth: api_pb2.AuthConfig | None = None, timeout: float = 300) -> str:
    req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
    if auth is not None:
        req.auth.CopyFrom(auth)
    with cri.images(env.cri_socket) as stub:
        return str(stub.PullImage(req, timeout=timeout).image_ref)


def records(cd: PrivateContainerd) -> dict[str, dict[str, str]]:
    """name -> labels of every image record in k8s.io."""
    with grpc.insecure_channel(f"unix:{cd.socket}") as ch:
        resp = images_pb2_grpc.ImagesStub(ch).List(
            images_pb2.ListImagesRequest(), metadata=(("containerd-namespace", "k8s.io"),), timeout=30
        )
    return {img.name: dict(img.labels) for img in resp.images}


def blob_gets(reg: Registry, digests: set[str]) -> list[tuple[str, str, int]]:
    return [
        r for r in reg.requests() if r[0] == "GET" and "/blobs/" in r[1] and r[1].rsplit("/", 1)[1] in digests
    ]


def layer_gets(reg: Registry, since: int, digest: str) -> list[tuple[str, str, int]]:
    """GETs of blob `digest` in the access log after its first `since` lines (waited for a moment:
    the registry writes a line once its response is out)."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in reg.requests()[since:] if r[0] == "GET" and r[1].endswith(digest)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_signed_pull_runs_through_containerds_cri_runtime(
    env: Env, containerd: PrivateContainerd, pause_image: str, tmp_path: pathlib.Path
) -> None:
    img = archives.simple_image("hello from a pod")
    digest = env.push_signed(env.reg, "signed/app", "v1", img)
    tag = f"{env.reg.host}/signed/app:v1"
    image_id = pull_image(env, tag)
    assert image_id == img.config_digest
    # Recorded as containerd's CRI records a pull of the tag, with imaged's verification label.
    found = records(containerd)
    for name in (tag, f"{env.reg.host}/signed/app@{digest}", image_id):
        assert found[name]["io.cri-containerd.image"] == "managed", found[name]
        assert found[name]["imaged.dev/verified"].startswith("verified via legacy signature"), found[name]
    # containerd's CRI knows every name already (no waiting on the test's side).
    status = cri.image_status(containerd.socket, tag).image
    assert status.id == image_id and tag in status.repo_tags
    assert status.repo_digests == [f"{env.reg.host}/signed/app@{digest}"]
    assert leases(containerd, "k8s.io") == []
    log, container = cri.run_in_pod(containerd.socket, image_id, tmp_path)
    assert "stdout F hello from a pod" in log
    assert container.exit_code == 0
    assert container.image.image == tag  # containerd's CRI names the image by its tag
    assert container.image_ref == f"{env.reg.host}/signed/app@{digest}"


def test_an_image_the_node_has_is_not_pulled_again(env: Env, containerd: PrivateContainerd) -> None:
    """A kubelet with `imagePullPolicy: Always` pulls at every pod start. The policy still decides
    and the tag is still resolved at the registry, but a verified digest that is recorded,
    unpacked and known to containerd's CRI is not handed to containerd's pull (which would only
    resolve the digest again and compare its records); its records are made what a pull makes.
    A tag that moved is pulled."""
    img = archives.simple_image("warm-v1")
    digest = env.push_signed(env.reg, "signed/warm", "v1", img)
    tag = f"{env.reg.host}/signed/warm:v1"
    pinned = f"{env.reg.host}/signed/warm@{digest}"
    assert pull_image(env, tag) == img.config_digest
    containerd.ctr("images", "rm", tag, namespace="k8s.io")  # the tag record gone, the image kept
    before = len(env.reg.requests())
    assert pull_image(env, tag) == img.config_digest
    asked = env.reg.requests()[before:]
    assert ("HEAD", "/v2/signed/warm/manifests/v1", 200) in asked, asked  # the pin: resolved again
    assert not [r for r in asked if digest in r[1] or "/blobs/" in r[1]], asked  # nothing else
    found = records(containerd)
    for name in (tag, pinned, img.config_digest):
        assert found[name]["io.cri-containerd.image"] == "managed", found[name]
        assert found[name]["imaged.dev/verified"].startswith("verified via legacy signature"), found[name]
    status = cri.image_status(containerd.socket, tag).image
    assert status.id == img.config_digest and tag in status.repo_tags
    assert leases(containerd, "k8s.io") == []

    moved = archives.simple_image("warm-v2")
    digest2 = env.push_signed(env.reg, "signed/warm", "v1", moved)
    before = len(env.reg.requests())
    assert pull_image(env, tag) == moved.config_digest
    asked = env.reg.requests()[before:]
    assert [r for r in asked if r[1].endswith(f"/manifests/{digest2}")], asked  # containerd pulled
    assert cri.image_status(containerd.socket, tag).image.id == moved.config_digest


def test_unsigned_or_denied_is_refused_before_any_layer(env: Env, containerd: PrivateContainerd) -> None:
    unsigned = archives.simple_image("cri-unsigned")
    archives.push(env.reg, "signed/unsigned", "v1", unsigned)
    denied = archives.simple_image("cri-denied")
    archives.push(env.reg, "denied/app", "v1", denied)
    for ref, img, fragment in (
        (f"{env.reg.host}/signed/unsigned:v1", unsigned, "image verification failed"),
        (f"{env.reg.host}/denied/app:v1", denied, "denied by matched rule"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            pull_image(env, ref)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert fragment in (e.value.details() or "")
        # Nothing recorded, nothing of the image in containerd, no blob of it fetched.
        assert not [n for n in records(containerd) if ref.rsplit(":", 1)[0] in n]
        assert cri.image_status(containerd.socket, ref).HasField("image") is False
        blobs = {img.config_digest, img.layers[-1].digest}  # its own (busybox is shared)
        assert not blob_gets(env.reg, blobs), "a refused image's blobs were downloaded"
        content = containerd.ctr("content", "ls", "-q", namespace="k8s.io").stdout.split()
        assert not blobs & set(content)
    assert leases(containerd, "k8s.io") == []


def test_private_registry_with_credentials_only_in_the_request(
    env: Env, containerd: PrivateContainerd
) -> None:
    ((user, password),) = USERS.items()
    img = archives.simple_image("private-cri")
    digest = env.push_signed(env.private, "signed/private", "v1", img)
    ref = f"{env.private.host}/signed/private:v1"
    # Without credentials neither the signature nor the image can be read.
    with pytest.raises(grpc.RpcError) as e:
        pull_image(env, ref)
    assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert password not in (e.value.details() or "")
    ways = {
        "username/password": api_pb2.AuthConfig(username=user, password=password),
        "auth": api_pb2.AuthConfig(auth=base64.b64encode(f"{user}:{password}".encode()).decode()),
        "server_address": api_pb2.AuthConfig(
            username=user, password=password, server_address=f"https://{env.private.host}"
        ),
    }
    for how, auth in ways.items():
        assert pull_image(env, ref, auth) == img.config_digest, how
        assert f"{env.private.host}/signed/private@{digest}" in records(containerd)
        with cri.images(env.cri_socket) as stub:
            stub.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    # Credentials for another registry are not sent to this one.
    elsewhere = api_pb2.AuthConfig(username=user, password=password, server_address="https://elsewhere.test")
    with pytest.raises(grpc.RpcError) as e:
        pull_image(env, ref, elsewhere)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A registry token alone (containerd's CRI ignores those: imaged pulls itself).
    assert env.private.token_server is not None
    token = env.private.token_server.issue(user, ["repository:signed/private:pull"])
    assert pull_image(env, ref, api_pb2.AuthConfig(registry_token=token)) == img.config_digest
    status = cri.image_status(containerd.socket, ref).image
    assert status.id == img.config_digest and ref in status.repo_tags
    assert records(containerd)[ref]["imaged.dev/verified"].startswith("verified via")
    assert password not in env.daemon.logs() and token not in env.daemon.logs()
    assert leases(containerd, "k8s.io") == []


def test_an_image_no_rule_covers_is_pulled_as_containerd_would(
    env: Env, containerd: PrivateContainerd
) -> None:
    img = archives.simple_image("no-rule")
    archives.push(env.reg, "open/app", "v2", img)
    ref = f"{env.reg.host}/open/app:v2"
    assert pull_image(env, ref) == img.config_digest
    found = records(containerd)
    assert found[ref] == {"io.cri-containerd.image": "managed"}
    assert ref in cri.image_status(containerd.socket, ref).image.repo_tags


def k8s_leases(cd: PrivateContainerd) -> dict[str, list[tuple[str, str]]]:
    """Every lease in k8s.io (imaged's or not) -> its resources (type, id)."""
    with grpc.insecure_channel(f"unix:{cd.socket}") as ch:
        stub = leases_pb2_grpc.LeasesStub(ch)
        md = (("containerd-namespace", "k8s.io"),)
        found = stub.List(leases_pb2.ListRequest(), metadata=md, timeout=30).leases
        return {
            le.id: [
                (r.type, r.id)
                for r in stub.ListResources(
                    leases_pb2.ListResourcesRequest(id=le.id), metadata=md, timeout=30
                ).resources
            ]
            for le in found
        }


def test_a_cancelled_pull_leaves_no_lease_or_record_and_resumes(
    env: Env, containerd: PrivateContainerd
) -> None:
    big = archives.Image(
        [archives.busybox_layer(), archives.layer({"big": os.urandom(96 << 20)}, compress=False)]
    )
    digest = env.push_signed(env.reg, "signed/big", "v1", big)
    ref = f"{env.reg.host}/signed/big:v1"
    layer = big.layers[-1].digest
    with cri.images(env.cri_socket) as stub:
        call = stub.PullImage.future(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=300
        )
        deadline = time.monotonic() + 60
        while not [i for i in ingests(containerd, "k8s.io") if layer in i] and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        call.cancel()
    deadline = time.monotonic() + 10
    while leases(containerd, "k8s.io") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leases(containerd, "k8s.io") == []
    assert not [n for n in records(containerd) if "signed/big" in n]
    # The partial download outlives the lease and the next pull goes on from there.
    containerd.ctr("leases", "create", "--id", "gc-now", namespace="k8s.io")
    containerd.ctr("leases", "rm", "--sync", "gc-now", namespace="k8s.io")
    assert [i for i in ingests(containerd, "k8s.io") if layer in i], "the partial download is gone"
    before = len(env.reg.requests())
    assert pull_image(env, ref) == big.config_digest
    resumed = layer_gets(env.reg, before, layer)
    assert resumed and all(r[2] == 206 for r in resumed), resumed
    assert f"{env.reg.host}/signed/big@{digest}" in records(containerd)
    assert ingests(containerd, "k8s.io") == []


STALL_AT = 8 << 20


def ingest_offset(cd: PrivateContainerd, ref: str) -> int:
    """How many bytes containerd holds of ingest `ref` in k8s.io (-1: no such ingest)."""
    with grpc.insecure_channel(f"unix:{cd.socket}") as ch:
        resp = content_pb2_grpc.ContentStub(ch).ListStatuses(
            content_pb2.ListStatusesRequest(filters=[f'ref=="{ref}"']),
            metadata=(("containerd-namespace", "k8s.io"),),
            timeout=30,
        )
    return max((st.offset for st in resp.statuses), default=-1)


def test_the_cri_pulls_under_imageds_lease_and_a_cancelled_pull_resumes(node: Node) -> None:
    """The lease imaged sends containerd's CRI (`containerd-lease` header) holds what the CRI
    downloads, on 1.6 and on 2.x (whose CRI pulls through its Transfer service): the only lease
    during the pull is imaged's and it holds the layer's ingest; after a cancel no lease or record
    is left, and the next pull resumes the partial download (README, "The kubelet's pulls").
    The layer's first GET stalls after 8 MiB (a proxy): the cancel lands mid-download, once
    containerd holds those bytes, and the next GET asks for the rest from there."""
    containerd = node.containerd
    big = archives.Image(
        [archives.busybox_layer(), archives.layer({"big": os.urandom(48 << 20)}, compress=False)]
    )
    layer = big.layers[-1].digest
    with FaultProxy(node.reg.host) as proxy:
        proxy.add(Fault("stall", path=blob_path(layer), after=STALL_AT, seconds=120, only_from_start=True))
        repo = f"lease/big-{containerd.major}"
        digest = archives.push(node.reg, repo, "v1", big)
        ref = f"{proxy.host}/{repo}:v1"
        with cri.images(node.cri_socket) as stub:
            call = stub.PullImage.future(
                api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=300
            )
            deadline = time.monotonic() + 60
            while ingest_offset(containerd, f"layer-{layer}") < STALL_AT and time.monotonic() < deadline:
                time.sleep(0.05)
            during = k8s_leases(containerd)
            call.cancel()
        assert len(during) == 1 and next(iter(during)).startswith("imaged-cri-pull-"), during
        assert ("ingests", f"layer-{layer}") in next(iter(during.values())), during
        deadline = time.monotonic() + 10
        while k8s_leases(containerd) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert k8s_leases(containerd) == {}
        assert not [n for n in records(containerd) if repo in n]
        # The partial download outlives the lease (a garbage collection now keeps it).
        containerd.ctr("leases", "create", "--id", "gc-now", namespace="k8s.io")
        containerd.ctr("leases", "rm", "--sync", "gc-now", namespace="k8s.io")
        assert ingest_offset(containerd, f"layer-{layer}") == STALL_AT, "the partial download is gone"
        assert pull_image(node, ref) == big.config_digest
        gets = proxy.entries(blob_path(layer), "GET")
        assert [e.range_start for e in gets] == [None, STALL_AT], gets
        assert f"{proxy.host}/{repo}@{digest}" in records(containerd)
        assert ingests(containerd, "k8s.io") == []


def test_concurrent_pulls_of_one_image(env: Env, containerd: PrivateContainerd) -> None:
    img = archives.simple_image("concurrent-cri")
    env.push_signed(env.reg, "signed/concurrent", "v1", img)
    ref = f"{env.reg.host}/signed/concurrent:v1"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(pull_image(env, ref))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [img.config_digest] * 4
    assert ref in cri.image_status(containerd.socket, ref).image.repo_tags
    assert leases(containerd, "k8s.io") == []


def test_without_auth_in_the_request_the_configured_credentials_pull(
    env: Env, containerd: PrivateContainerd
) -> None:
    """A PullImage with no `auth` uses imaged's configured credentials for the registry, for the
    policy and for containerd's transfer alike (containerd's CRI falls back to its own configured
    ones likewise); before, the policy read the signature with them and containerd's CRI, sent
    none, was refused by the registry."""
    ((user, password),) = USERS.items()
    img = archives.simple_image("private-configured")
    digest = env.push_signed(env.private, "signed/configured", "v1", img)
    ref = f"{env.private.host}/signed/configured:v1"
    cfg = {
        "verification": env.daemon.config["verification"],
        "registries": {"hosts": {env.private.host: {"auth": {"username": user, "password": password}}}},
    }
    d = DaemonProcess(containerd.socket, cfg)
    sock = str(d.dir / "cri.sock")
    d.config["listen"]["cri"] = {"path": sock}
    d.config_path.write_text(yaml.safe_dump(d.config))
    d.start()
    try:
        with cri.images(sock) as stub:
            req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
            assert stub.PullImage(req, timeout=120).image_ref == img.config_digest
        assert f"{env.private.host}/signed/configured@{digest}" in records(containerd)
        assert records(containerd)[ref]["imaged.dev/verified"].startswith("verified via")
        log = env.private.log_path.read_text(errors="replace")
        gets = [ln for ln in log.splitlines() if '"GET ' in ln and f"/blobs/{img.layers[-1].digest}" in ln]
        assert gets and all('"containerd/' in ln for ln in gets), gets
        assert password not in d.logs()
    finally:
        d.stop()
