"""Past one node: three nodes pull the same images through one pull-through cache.

Each node stand-in is a private containerd with its own imaged. One origin registry (Debian's
docker-registry) holds signed images; distribution v3's registry in proxy mode (`proxy.remoteurl`,
built by tools/peers.py) is the pull-through cache in front of it. Every node's imaged is configured
as a node would be: `registries.config_path` names a containerd-style hosts.toml directory whose file
for the origin lists the cache as a mirror (`capabilities = ["pull", "resolve"]`), the origin itself
as the server. The origin's access log shows what left it: each blob exactly once, for the first
node, and nothing for the others. Verification (a publicKey rule) reads the signatures through the
mirror too.

Why v3 and not Debian's 2.8 as the cache: 2.8's proxy fetches a blob it lacks twice from the origin
(one fetch to keep, one to stream to the asking client); v3 streams one fetch to both. Measured here
for both (`test_what_a_cache_takes_from_the_origin_per_blob`). Neither merges concurrent misses (a
blob asked for again while the cache is still fetching it is fetched from the origin again): the
first node pulls alone and the other two then pull at the same time, as a rollout would. README
"Scaling past one node".
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess
from tests.support.registry import DEBIAN_REGISTRY, DISTRIBUTION_V3, Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

NODES = 3
# An access-log entry (combined format) whose User-Agent is imaged's: (method, path, status).
IMAGED_REQUEST = re.compile(r'"(GET|HEAD) (\S+) HTTP/[0-9.]+" (\d{3}) \S+ "[^"]*" "imaged/')


@dataclass
class Node:
    containerd: PrivateContainerd
    daemon: DaemonProcess

    def pull(self, ref: str) -> str:
        last = None
        for msg in self.daemon.images.Pull(
            image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref=ref), timeout=300
        ):
            last = msg
        assert last is not None
        return str(last.name)

    def run(self, ref: str) -> str:
        cid = f"node-{uuid.uuid4().hex[:8]}"
        return self.containerd.ctr("run", "--rm", ref, cid, namespace="system", timeout=120).stdout


@dataclass
class Cluster:
    origin: Registry
    cache: Registry
    nodes: list[Node]
    ps: PrivateSigstore
    key: object


def hosts_toml(certs: pathlib.Path, origin: Registry, cache: Registry) -> pathlib.Path:
    d = certs / origin.host
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(
        f'server = "{origin.url}"\n\n[host."{cache.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return certs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    origin = Registry()
    cache = Registry(proxy_of=origin.url, program=DISTRIBUTION_V3)
    certs = hosts_toml(tmp_path_factory.mktemp("certs.d"), origin, cache)
    ps = PrivateSigstore(seed=b"pull-through-cache")
    key = ps.static_key()
    rules = [{"image": f"{origin.host}/fleet/*", "publicKey": {"certificate": key.public_pem.decode()}}]
    nodes: list[Node] = []
    try:
        for _ in range(NODES):
            cd = PrivateContainerd()
            cd.start()
            d = DaemonProcess(
                cd.socket,
                {"registries": {"config_path": str(certs)}, "verification": {"rules": rules}},
            )
            d.start()
            nodes.append(Node(cd, d))
        yield Cluster(origin, cache, nodes, ps, key)
    finally:
        for n in nodes:
            n.daemon.stop()
            n.containerd.destroy()
        cache.close()
        origin.close()


def push_signed(c: Cluster, repo: str, image: archives.Image) -> str:
    digest = archives.push(c.origin, repo, "v1", image)
    sig = c.ps.sign_legacy(digest, f"{c.origin.host}/{repo}", c.key, tlog=False)  # type: ignore[arg-type]
    OciPusher(c.origin).push_legacy_signatures(repo, digest, [sig])
    return digest


def origin_blob_gets(c: Cluster, since: int) -> dict[str, int]:
    """GETs of each blob that the origin served since its `since`-th logged request."""
    out: dict[str, int] = {}
    for m, p, _ in c.origin.requests()[since:]:
        path = p.split("?")[0]
        if m == "GET" and "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            out[digest] = out.get(digest, 0) + 1
    return out


def test_blobs_leave_the_origin_for_the_cache_only_not_per_node(cluster: Cluster) -> None:
    marker = uuid.uuid4().hex[:10]
    image = archives.Image(
        [
            archives.busybox_layer(),
            archives.layer({"etc/marker": marker.encode(), "blob": os.urandom(2 << 20)}, compress=False),
            archives.layer({"etc/second": os.urandom(1 << 20)}, compress=False),
        ],
        cmd=["/bin/echo", marker],
    )
    digest = push_signed(cluster, "fleet/app", image)
    ref = f"{cluster.origin.host}/fleet/app:v1"
    blobs = [image.config_digest, *(la.digest for la in image.layers)]
    before = len(cluster.origin.requests())

    first, *rest = cluster.nodes
    names = [first.pull(ref)]
    after_first = origin_blob_gets(cluster, before)
    # Each blob left the origin exactly once: the image's config and layers, and the signature's.
    assert set(blobs) <= set(after_first), (blobs, after_first)
    assert set(after_first.values()) == {1}, after_first

    errors: list[BaseException] = []

    def pull(n: Node) -> None:
        try:
            names.append(n.pull(ref))
        except BaseException as e:  # the assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(n,)) for n in rest]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert names == [f"{cluster.origin.host}/fleet/app@{digest}"] * NODES
    # The other nodes took nothing more from the origin: every blob came from the cache.
    assert origin_blob_gets(cluster, before) == after_first
    for blob in blobs:
        assert cluster.cache.blob_get_count(blob) >= NODES
    for n in cluster.nodes:
        assert n.run(ref).strip() == marker
        listed = {
            r.name: r for r in n.daemon.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))
        }
        assert listed[ref].labels["imaged.dev/verified"].startswith("verified via legacy signature")
    # The signature was read through the mirror too.
    sig_tag = f"sha256-{digest.split(':')[1]}.sig"
    assert any(
        p.split("?")[0].endswith(f"/fleet/app/manifests/{sig_tag}") for _, p, _ in cluster.cache.requests()
    )
    # No node went around the cache for anything the cache has. What imaged asked the origin itself
    # (its User-Agent) is only where signatures may be that the cache answered 404 for, the OCI
    # referrers API and the referrers tag: a 404 from a mirror moves on to the next host, as in
    # containerd's resolver (a mirror may lag behind). Small requests, no blob.
    log = cluster.origin.log_path.read_text(errors="replace")
    direct = IMAGED_REQUEST.findall(log)
    assert direct, "imaged's User-Agent is recognized in the origin's access log"
    hex_ = digest.split(":")[1]
    allowed = {f"/v2/fleet/app/referrers/{digest}", f"/v2/fleet/app/manifests/sha256-{hex_}"}
    for method, path, status in direct:
        assert (method, path.split("?")[0], status) in {("GET", a, "404") for a in allowed}, (
            method,
            path,
            status,
        )


def test_verification_through_the_mirror_still_refuses_unsigned(cluster: Cluster) -> None:
    digest = archives.push(cluster.origin, "fleet/unsigned", "v1", archives.simple_image("fleet-unsigned"))
    ref = f"{cluster.origin.host}/fleet/unsigned:v1"
    for n in cluster.nodes:
        with pytest.raises(grpc.RpcError) as e:
            n.pull(ref)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        assert "no signatures found" in str(e.value.details())
    assert not [p for m, p, _ in cluster.origin.requests() if m == "GET" and "/blobs/" in p and digest in p]


def _origin_gets_settled(origin: Registry, blob: str, at_least: int) -> int:
    """GETs of `blob` at the origin once they stop changing (2.8 keeps its copy in the background)."""
    deadline = time.monotonic() + 10
    while origin.blob_get_count(blob) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:
        seen = origin.blob_get_count(blob)
        time.sleep(0.5)
        if origin.blob_get_count(blob) == seen or time.monotonic() > deadline:
            return origin.blob_get_count(blob)


@pytest.mark.parametrize(
    ("program", "first_miss"),
    [(DEBIAN_REGISTRY, 2), (DISTRIBUTION_V3, 1)],
    ids=["docker-registry-2.8", "distribution-v3"],
)
def test_what_a_cache_takes_from_the_origin_per_blob(program: str, first_miss: int) -> None:
    """One blob asked of a fresh cache, then again: what the origin served each time, exactly."""
    origin = Registry()
    cache = Registry(proxy_of=origin.url, program=program)
    try:
        image = archives.Image([archives.layer({"blob": os.urandom(4 << 20)}, compress=False)])
        archives.push(origin, "fleet/probe", "v1", image)
        blob = image.layers[0].digest
        assert origin.blob_get_count(blob) == 0
        for asked, expected in ((1, first_miss), (2, first_miss), (3, first_miss)):
            with urllib.request.urlopen(f"{cache.url}/v2/fleet/probe/blobs/{blob}", timeout=60) as r:
                assert r.read() == image.layers[0].blob
            assert _origin_gets_settled(origin, blob, expected) == expected, (program, asked)
        assert cache.blob_get_count(blob) == 3
    finally:
        cache.close()
        origin.close()
