"""Import of real archives into the session's containerd, proven by running the images."""

from __future__ import annotations

import asyncio
import json
import pathlib
import tarfile
import time
from typing import Any

import pytest

from imaged.archive.plan import DOCKER_LAYER_ZSTD
from imaged.containerd import labels as L
from imaged.containerd.content import ContentStore
from imaged.containerd.images import ImageStore
from imaged.oci import mediatypes as mt
from tests.archive import builders as B
from tests.archive.conftest import Importer
from tests.support import archives as A
from tests.support import cri
from tests.support.containerd import PrivateContainerd
from tests.support.images import copy_to_archive

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True

SKOPEO_NAME = {
    "docker": "registry.test/archive/skopeo-docker:v1",
    "oci": "registry.test/archive/skopeo-oci:v1",
}


@pytest.fixture(scope="module")
def skopeo_archives(layout: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """docker-archive (Docker schema2) and oci-archive tarballs written by skopeo from the umoci layout."""
    out = tmp_path_factory.mktemp("skopeo")
    made = {}
    for kind in ("docker", "oci"):
        path = copy_to_archive(layout, out / f"{kind}.tar", SKOPEO_NAME[kind], kind=kind)  # type: ignore[arg-type]
        made[kind] = path.read_bytes()
    return made


@pytest.mark.parametrize("namespace", ["k8s.io", "system"])
@pytest.mark.parametrize("kind", ["docker", "oci"])
async def test_skopeo_archive_imports_and_runs(
    importer: Importer, skopeo_archives: dict[str, bytes], kind: str, namespace: str
) -> None:
    names = await importer.run(namespace, skopeo_archives[kind])
    assert names == [SKOPEO_NAME[kind]]
    records = await importer.records(namespace)
    target = records[SKOPEO_NAME[kind]]
    repo = SKOPEO_NAME[kind].rsplit(":", 1)[0]
    assert records[f"{repo}@{target}"] == target
    assert importer.run_container(namespace, SKOPEO_NAME[kind]) == "hello\n"
    assert await importer.leftovers(namespace) == ([], [])
    if kind == "docker":
        manifest = json.loads(await ContentStore(importer.cd.ns(namespace)).read_all(target, 1 << 20))
        assert manifest["mediaType"] == mt.DOCKER_MANIFEST
        assert manifest["config"]["mediaType"] == mt.DOCKER_CONFIG
        # skopeo writes plain tars
        assert [la["mediaType"] for la in manifest["layers"]] == [mt.DOCKER_LAYER] * 2


async def test_cri_sees_imported_image(importer: Importer, containerd: PrivateContainerd) -> None:
    img = B.host_image("cri-view")
    name = "registry.test/archive/cri-view:v3"
    assert await importer.run("k8s.io", A.oci_archive([(name, img)])) == [name]
    records = {i.name: i for i in await ImageStore(importer.cd.ns("k8s.io")).list()}
    for record in (name, f"registry.test/archive/cri-view@{img.digest}", img.config_digest):
        assert records[record].target.digest == img.digest
        assert records[record].labels[L.CRI_MANAGED] == "managed"
    # containerd's CRI learns each name from its image events, one after the other: wait for all.
    deadline = time.monotonic() + 10
    while True:
        seen = {i.id: i for i in cri.list_images(containerd.socket)}
        known = seen.get(img.config_digest)
        if (known is not None and name in known.repo_tags) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert name in seen[img.config_digest].repo_tags
    assert f"registry.test/archive/cri-view@{img.digest}" in seen[img.config_digest].repo_digests


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("kind", ["docker", "oci"])
async def test_compressed_archives(
    importer: Importer, skopeo_archives: dict[str, bytes], kind: str, compression: str
) -> None:
    plain = skopeo_archives[kind]
    data = B.gz(plain) if compression == "gzip" else B.zst(plain)
    namespace = f"arx-{compression}-{kind}"
    assert await importer.run(namespace, data) == [SKOPEO_NAME[kind]]
    # The same image as the uncompressed archive gives (imported in its own namespace).
    reference = f"arx-plain-{kind}"
    await importer.run(reference, plain)
    assert await importer.records(namespace) == await importer.records(reference)
    assert importer.run_container(namespace, SKOPEO_NAME[kind]) == "hello\n"
    assert await importer.leftovers(namespace) == ([], [])


async def test_docker_save_with_two_images(importer: Importer) -> None:
    one, two = B.host_image("first-of-two", docker=True), B.host_image("second-of-two", docker=True)
    data = A.docker_archive(
        [(["registry.test/archive/two:one"], one), (["archive-two:b", "registry.test/archive/two:two"], two)]
    )
    names = await importer.run("system", data)
    assert names == [
        "registry.test/archive/two:one",
        "docker.io/library/archive-two:b",
        "registry.test/archive/two:two",
    ]
    records = await importer.records("system")
    assert records["registry.test/archive/two:two"] == records["docker.io/library/archive-two:b"]
    assert records["registry.test/archive/two:one"] != records["registry.test/archive/two:two"]
    assert importer.run_container("system", "registry.test/archive/two:one") == "first-of-two\n"
    assert importer.run_container("system", "docker.io/library/archive-two:b") == "second-of-two\n"


async def test_a_failure_recording_the_second_image_takes_the_first_away_too(
    importer: Importer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imaged.archive import importer as importer_mod
    from imaged.errors import Unavailable

    real = importer_mod.create_records

    async def failing(ns: Any, ref: Any, *args: Any, **kw: Any) -> list[str]:
        if "two:two" in str(ref):
            raise Unavailable("containerd went away (injected)")
        return await real(ns, ref, *args, **kw)

    monkeypatch.setattr(importer_mod, "create_records", failing)
    one, two = B.host_image("first-of-two", docker=True), B.host_image("second-of-two", docker=True)
    data = A.docker_archive(
        [(["registry.test/archive/undo:one"], one), (["registry.test/archive/two:two"], two)]
    )
    with pytest.raises(Unavailable):
        await importer.run("undo-records", data)
    assert await importer.records("undo-records") == {}, "an import records all its images or none"
    assert await importer.leftovers("undo-records") == ([], [])


async def test_docker_manifest_is_the_one_ctr_import_makes(
    importer: Importer, containerd: PrivateContainerd, skopeo_archives: dict[str, bytes]
) -> None:
    """The synthesized schema2 manifest has containerd's bytes, so both importers agree on the digest."""
    containerd.ctr("images", "import", "-", namespace="arx-ctr", input=skopeo_archives["docker"])
    theirs = (await importer.records("arx-ctr"))[SKOPEO_NAME["docker"]]
    await importer.run("arx-ours", skopeo_archives["docker"])
    assert (await importer.records("arx-ours"))[SKOPEO_NAME["docker"]] == theirs


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
async def test_docker_save_compressed_layers(importer: Importer, compress: str) -> None:
    img = B.host_image(f"{compress}-layers", docker=True)
    name = f"registry.test/archive/layers-{compress}:v1"
    assert await importer.run("system", B.tar(B.docker_members([([name], img)], compress=compress))) == [name]
    target = (await importer.records("system"))[name]
    manifest = json.loads(await ContentStore(importer.cd.ns("system")).read_all(target, 1 << 20))
    expected = mt.DOCKER_LAYER_GZIP if compress == "gzip" else DOCKER_LAYER_ZSTD
    assert [la["mediaType"] for la in manifest["layers"]] == [expected] * 2
    assert importer.run_container("system", name) == f"{compress}-layers\n"


async def test_docker25_hybrid_oci_layout_wins(importer: Importer) -> None:
    """docker save (25+) writes an OCI layout and manifest.json; the layout's names and manifest are used."""
    img = B.host_image("hybrid")
    name = "registry.test/archive/hybrid:v25"
    members = B.oci_members(
        [({"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "v25"}, img)]
    )
    manifest_json = [
        {
            "Config": B.blob_name(img.config_digest),
            "RepoTags": ["registry.test/archive/hybrid-docker-name:v1"],
            "Layers": [B.blob_name(la.digest) for la in img.layers],
        }
    ]
    members.append(B.M("manifest.json", json.dumps(manifest_json).encode()))
    members.append(B.M("repositories", b"{}"))
    assert await importer.run("system", B.tar(members)) == [name]
    records = await importer.records("system")
    assert records[name] == img.digest
    assert "registry.test/archive/hybrid-docker-name:v1" not in records
    assert importer.run_container("system", name) == "hybrid\n"


async def test_metadata_first_or_last(importer: Importer) -> None:
    """Members in any order: index.json and oci-layout before or after the blobs."""
    img = B.host_image("order")
    name = "registry.test/archive/order:v1"
    members = B.oci_members([({"io.containerd.image.name": name}, img)])
    for namespace, ordered in (("arx-first", members), ("arx-last", members[2:] + members[:2])):
        assert await importer.run(namespace, B.tar(ordered)) == [name]
        assert (await importer.records(namespace))[name] == img.digest


async def test_multiplatform_index(importer: Importer) -> None:
    """The host's manifest is unpacked; the other platform is kept as labelled content, not unpacked."""
    host, other = B.host_image("multi-host"), B.foreign_image("multi-other")
    index = B.index_json([other.descriptor(), host.descriptor()])
    name = "registry.test/archive/multi:v1"
    top = {
        "mediaType": mt.OCI_INDEX,
        "digest": A.sha(index),
        "size": len(index),
        "annotations": {"io.containerd.image.name": name},
    }
    stray = bytes(range(256)) * 1200  # over the in-memory size: written under the lease, then collected
    blobs = {**host.blobs(), **other.blobs(), A.sha(index): index, A.sha(stray): stray}
    members = [B.M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), B.M("index.json", B.index_json([top]))]
    members += [B.M(B.blob_name(d), data) for d, data in blobs.items()]
    namespace = "arx-multi"
    assert await importer.run(namespace, B.tar(members)) == [name]
    records = await importer.records(namespace)
    assert records[name] == A.sha(index)
    # Outside k8s.io the id alias is the index digest, as Talos names it (k8s.io: the host's config).
    assert records[A.sha(index)] == A.sha(index) and host.config_digest not in records
    store = ContentStore(importer.cd.ns(namespace))
    index_info = await store.info(A.sha(index))
    assert index_info is not None
    assert index_info.labels[f"{L.GC_REF_CONTENT}.m.0"] == other.digest
    assert index_info.labels[f"{L.GC_REF_CONTENT}.m.1"] == host.digest
    for img in (host, other):
        info = await store.info(img.digest)
        assert info is not None
        assert info.labels[L.GC_REF_CONFIG] == img.config_digest
        assert [info.labels[f"{L.GC_REF_CONTENT}.l.{i}"] for i in range(len(img.layers))] == [
            la.digest for la in img.layers
        ]
    host_config, other_config = await store.info(host.config_digest), await store.info(other.config_digest)
    assert host_config is not None and other_config is not None
    assert f"{L.GC_REF_SNAPSHOT}.overlayfs" in host_config.labels
    assert f"{L.GC_REF_SNAPSHOT}.overlayfs" not in other_config.labels
    # The unpacked (host) layers carry their diffID, as containerd's own unpacker leaves them.
    for la in host.layers:
        layer_info = await store.info(la.digest)
        assert layer_info is not None and layer_info.labels[L.UNCOMPRESSED] == la.diff_id
    assert importer.run_container(namespace, name) == "multi-host\n"
    # A synchronous garbage collection keeps everything the index reaches (the import's lease is gone).
    importer.gc(namespace)
    for digest in (*host.blobs(), *other.blobs()):
        assert await store.info(digest) is not None, digest
    assert await store.info(A.sha(stray)) is None  # only the import's lease held it, and that is gone


async def test_index_with_only_host_platform_content(importer: Importer) -> None:
    """Like docker save of one platform of a multi-platform image: other platforms' blobs are absent."""
    host, other = B.host_image("partial-host"), B.foreign_image("partial-other")
    index = B.index_json([host.descriptor(), other.descriptor()])
    name = "registry.test/archive/partial:v1"
    top = {
        "mediaType": mt.OCI_INDEX,
        "digest": A.sha(index),
        "size": len(index),
        "annotations": {"io.containerd.image.name": name},
    }
    members = [B.M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), B.M("index.json", B.index_json([top]))]
    members += [B.M(B.blob_name(d), data) for d, data in {**host.blobs(), A.sha(index): index}.items()]
    assert await importer.run("arx-partial", B.tar(members)) == [name]
    assert importer.run_container("arx-partial", name) == "partial-host\n"


async def test_foreign_platform_image_is_kept_not_unpacked(importer: Importer) -> None:
    img = B.foreign_image("foreign-only")
    name = "registry.test/archive/foreign:v1"
    assert await importer.run("system", A.oci_archive([(name, img)])) == [name]
    config = await ContentStore(importer.cd.ns("system")).info(img.config_digest)
    assert config is not None
    assert not any(k.startswith(L.GC_REF_SNAPSHOT) for k in config.labels)
    assert (await importer.records("system"))[name] == img.digest


async def test_names_from_annotations(importer: Importer) -> None:
    """io.containerd.image.name first; a full ref.name is a name; a bare tag ref.name is not."""
    a, b, c = B.host_image("ann-a"), B.host_image("ann-b"), B.host_image("ann-c")
    members = B.oci_members(
        [
            ({"org.opencontainers.image.ref.name": "v1"}, a),
            ({"org.opencontainers.image.ref.name": "registry.test/archive/ann-b:v2"}, b),
            ({"io.containerd.image.name": "ann-c", "org.opencontainers.image.ref.name": "ignored/name:x"}, c),
        ]
    )
    names = await importer.run("arx-names", B.tar(members))
    assert names == ["registry.test/archive/ann-b:v2", "docker.io/library/ann-c:latest"]
    records = await importer.records("arx-names")
    assert a.digest not in records.values()
    assert records["docker.io/library/ann-c:latest"] == c.digest


async def test_reimport_is_idempotent(importer: Importer, skopeo_archives: dict[str, bytes]) -> None:
    first = await importer.run("arx-again", skopeo_archives["oci"])
    before = await importer.records("arx-again")
    assert await importer.run("arx-again", skopeo_archives["oci"]) == first
    assert await importer.records("arx-again") == before
    assert await importer.leftovers("arx-again") == ([], [])
    assert importer.run_container("arx-again", first[0]) == "hello\n"


CHUNKS = [1, 7, 64 * 1024, 4 * 1024 * 1024]


@pytest.fixture(scope="module")
def chunk_archives(skopeo_archives: dict[str, bytes]) -> dict[str, bytes]:
    """Small archives of each format for the byte-by-byte runs (a 2 MB archive 1 B at a time is slow)."""
    img = B.host_image("chunks")
    return {
        "oci": A.oci_archive([("registry.test/archive/chunks-oci:v1", img)]),
        "docker-gzip": B.gz(A.docker_archive([(["registry.test/archive/chunks-docker:v1"], img)])),
        "skopeo-oci-zstd": B.zst(skopeo_archives["oci"]),
    }


@pytest.mark.parametrize("kind", ["oci", "docker-gzip", "skopeo-oci-zstd"])
async def test_chunk_sizes_give_identical_results(
    importer: Importer, chunk_archives: dict[str, bytes], kind: str
) -> None:
    results = []
    for size in CHUNKS:
        namespace = f"arx-chunk-{kind}-{size}"
        names = await importer.run(namespace, chunk_archives[kind], chunk=size)
        content = importer.containerd.ctr("content", "ls", "-q", namespace=namespace).stdout.split()
        results.append((names, await importer.records(namespace), sorted(content)))
        assert await importer.leftovers(namespace) == ([], [])
    assert all(r == results[0] for r in results[1:])
    assert results[0][0]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
async def test_long_member_names(importer: Importer, fmt: int) -> None:
    """Layer paths over 100 characters: PAX headers (Python, Go, skopeo) and GNU long names (GNU tar)."""
    img = B.host_image("long-names", docker=True)
    members = B.docker_members([(["registry.test/archive/long:v1"], img)])
    entries = json.loads(members[-1].data)
    for m in members[:-1]:
        if m.name.endswith("layer.tar"):
            new = f"{'d' * 120}/{'e' * 90}/layer.tar"
            new = new.replace("layer.tar", m.name.split("/")[0][:12] + "-layer.tar")
            entries[0]["Layers"] = [new if p == m.name else p for p in entries[0]["Layers"]]
            m.name = new
    members[-1].data = json.dumps(entries).encode()
    namespace = f"arx-longnames-{fmt}"
    assert await importer.run(namespace, B.tar(members, format=fmt)) == ["registry.test/archive/long:v1"]
    assert importer.run_container(namespace, "registry.test/archive/long:v1") == "long-names\n"


async def test_only_referenced_content_is_kept(importer: Importer) -> None:
    """Clutter in a docker-save archive (hundreds of small members) costs no content writes."""
    img = B.host_image("clutter", docker=True)
    name = "registry.test/archive/clutter:v1"
    clutter = [B.M(f"clutter/{i}.txt", f"junk {i}".encode()) for i in range(500)]
    namespace = "arx-clutter"
    assert await importer.run(namespace, B.tar(clutter + B.docker_members([([name], img)]))) == [name]
    target = (await importer.records(namespace))[name]
    stored = set(importer.containerd.ctr("content", "ls", "-q", namespace=namespace).stdout.split())
    assert stored == {target, img.config_digest, *(la.diff_id for la in img.layers)}


async def test_concurrent_imports_of_one_archive(
    importer: Importer, skopeo_archives: dict[str, bytes]
) -> None:
    """Two clients importing the same archive at once: both succeed, sharing the blobs."""
    namespace = "arx-concurrent"
    for n in range(3):
        results = await asyncio.gather(
            importer.run(f"{namespace}-{n}", skopeo_archives["docker"], chunk=32 * 1024),
            importer.run(f"{namespace}-{n}", skopeo_archives["docker"], chunk=48 * 1024),
            return_exceptions=True,
        )
        assert list(results) == [[SKOPEO_NAME["docker"]]] * 2, results
        assert await importer.leftovers(f"{namespace}-{n}") == ([], [])
    assert importer.run_container(f"{namespace}-2", SKOPEO_NAME["docker"]) == "hello\n"
