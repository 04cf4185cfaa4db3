"""List and Remove end to end against a real containerd, checked against `ctr`."""

from __future__ import annotations

import importlib
import json
import pathlib
import subprocess
import sys
import uuid

import grpc
import pytest
from grpc_tools import protoc

from tests.conftest import FIXTURES, REPO
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import CRI, SYSTEM, DaemonProcess

# The common.proto parts the seed imports, written here so the client below uses no project code.
COMMON_PROTO = """
syntax = "proto3";
package common;
enum ContainerDriver { CONTAINERD = 0; CRI = 1; }
enum ContainerdNamespace { NS_UNKNOWN = 0; NS_SYSTEM = 1; NS_CRI = 2; }
message ContainerdInstance { ContainerDriver driver = 1; ContainerdNamespace namespace = 2; }
message Metadata { string hostname = 1; string error = 2; }
message Data { Metadata metadata = 1; bytes bytes = 2; }
"""


SEED_CLIENT = """
import json, sys
import grpc
from machine import image_pb2, image_pb2_grpc
from common import common_pb2

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True
socket, driver, ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stub = image_pb2_grpc.ImageServiceStub(grpc.insecure_channel("unix:" + socket))
req = image_pb2.ImageServiceListRequest(containerd=common_pb2.ContainerdInstance(driver=driver, namespace=ns))
print(json.dumps([{"name": r.name, "digest": r.digest, "size": r.size, "created": r.created_at.seconds}
                  for r in stub.List(req, timeout=60)]))
"""


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Stubs compiled from the published seed proto (tests/fixtures/seeds), not from protos/."""
    seed_path = FIXTURES / "seeds" / "talos-image.proto.txt"
    src = tmp_path_factory.mktemp("seedsrc")
    out = tmp_path_factory.mktemp("seedgen")
    text = seed_path.read_text()
    text = text[text.index('syntax = "proto3";') :]
    (src / "machine").mkdir()
    (src / "common").mkdir()
    (src / "machine" / "image.proto").write_text(text)
    (src / "common" / "common.proto").write_text(COMMON_PROTO)
    import grpc_tools

    wkt = str(pathlib.Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{src}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "machine/image.proto",
            "common/common.proto",
        ]
    )
    assert rc == 0
    (out / "client.py").write_text(SEED_CLIENT)
    return out


def seed_list(seed: pathlib.Path, daemon: DaemonProcess, driver: int, ns: int) -> dict[str, dict]:  # type: ignore[type-arg]
    """List through a client process that imports only the seed's stubs."""
    r = subprocess.run(
        [sys.executable, "-E", str(seed / "client.py"), daemon.socket, str(driver), str(ns)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=seed,
    )
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)}


def ctr_images(cd: PrivateContainerd, ns: str) -> dict[str, str]:
    out = cd.ctr("images", "ls", namespace=ns).stdout.splitlines()[1:]
    result = {}
    for line in out:
        cols = line.split()
        result[cols[0]] = cols[2]
    return result


def ctr_import(cd: PrivateContainerd, ns: str, data: bytes, *extra: str) -> None:
    cd.ctr("images", "import", *extra, "-", namespace=ns, input=data)


@pytest.fixture(scope="module")
def imported(containerd: PrivateContainerd) -> dict[str, archives.Image]:
    """Two images put in each namespace by ctr itself."""
    made = {}
    for ns in ("k8s.io", "system"):
        for i in range(2):
            img = archives.simple_image(f"{ns}-{i}-{uuid.uuid4().hex[:6]}")
            name = f"registry.test/foundation/{ns.replace('.', '')}-{i}:v1"
            ctr_import(containerd, ns, archives.oci_archive([(name, img)]))
            made[name] = img
    return made


def test_list_matches_ctr_in_both_namespaces(seed, daemon, containerd, imported) -> None:  # type: ignore[no-untyped-def]
    for ns, driver, enum in (("k8s.io", 1, 2), ("system", 0, 1)):
        listed = seed_list(seed, daemon, driver, enum)
        expected = ctr_images(containerd, ns)
        assert {n: r["digest"] for n, r in listed.items()} == expected
        assert any(n.startswith("registry.test/foundation/") for n in listed)


def test_list_sizes_are_manifest_config_layers(seed, daemon, imported) -> None:  # type: ignore[no-untyped-def]
    listed = seed_list(seed, daemon, 1, 2)
    listed.update(seed_list(seed, daemon, 0, 1))
    for name, img in imported.items():
        assert listed[name]["digest"] == img.digest
        assert listed[name]["size"] == img.size
        assert listed[name]["created"] > 0


def test_list_index_picks_host_platform(daemon, containerd) -> None:  # type: ignore[no-untyped-def]
    host = archives.simple_image("index-host")
    other = archives.Image([archives.layer({"x": b"arm"})], architecture="arm64", variant="v8")
    name = "registry.test/foundation/multi:v1"
    layout = archives.oci_archive([(name, host)])
    # Rewrite the archive's single manifest entry into a nested index of two platforms.
    import io
    import json
    import tarfile

    index = {
        "schemaVersion": 2,
        "mediaType": archives.OCI_INDEX,
        "manifests": [other.descriptor(), host.descriptor()],
    }
    index_bytes = json.dumps(index).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(layout)) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "index.json":
                top = {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": archives.OCI_INDEX,
                            "digest": archives.sha(index_bytes),
                            "size": len(index_bytes),
                            "annotations": {"io.containerd.image.name": name},
                        }
                    ],
                }
                data = json.dumps(top).encode()
            archives._add(dst, m.name, data)
        for d, blob in {**other.blobs(), archives.sha(index_bytes): index_bytes}.items():
            archives._add(dst, f"blobs/sha256/{d[7:]}", blob)
    containerd.ctr("images", "import", "--all-platforms", "-", namespace="k8s.io", input=buf.getvalue())
    listed = {
        r.name: r
        for r in daemon.images.List(
            __import__("imaged.pb.machine.image_pb2", fromlist=["x"]).ImageServiceListRequest(containerd=CRI)
        )
    }
    assert listed[name].digest == archives.sha(index_bytes)
    assert listed[name].size == len(index_bytes) + host.size


def test_remove_then_list(daemon, containerd) -> None:  # type: ignore[no-untyped-def]
    from imaged.pb.machine import image_pb2

    img = archives.simple_image(f"rm-{uuid.uuid4().hex[:6]}")
    name = "docker.io/library/rmtest:1.0"
    ctr_import(containerd, "system", archives.oci_archive([(name, img)]))
    assert name in ctr_images(containerd, "system")
    # The short form a person types.
    daemon.images.Remove(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref="rmtest:1.0"))
    listed = {r.name for r in daemon.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    assert name not in listed
    assert name not in ctr_images(containerd, "system")
    with pytest.raises(grpc.RpcError) as e:
        daemon.images.Remove(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref="rmtest:1.0"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "image rmtest:1.0 not found"


def test_remove_aliases(daemon, containerd) -> None:  # type: ignore[no-untyped-def]
    """A tag's aliases go with the last tag; removing an alias removes every record of the image."""
    from imaged.pb.machine import image_pb2

    img = archives.simple_image(f"alias-{uuid.uuid4().hex[:6]}")
    repo = "registry.test/foundation/alias"
    ctr_import(containerd, "system", archives.oci_archive([(f"{repo}:a", img)]))
    target = img.digest
    for extra in (f"{repo}:b", f"{repo}@{target}", img.config_digest):
        containerd.ctr("images", "tag", f"{repo}:a", extra, namespace="system")

    def names() -> set[str]:
        return {n for n, d in ctr_images(containerd, "system").items() if d == target}

    assert names() == {f"{repo}:a", f"{repo}:b", f"{repo}@{target}", img.config_digest}
    rm = daemon.images.Remove
    rm(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=f"{repo}:a"))
    assert names() == {f"{repo}:b", f"{repo}@{target}", img.config_digest}  # another tag remains
    rm(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=f"{repo}:b"))
    assert names() == set()  # last tag: aliases removed too
    # Removing by id removes every record of that image.
    ctr_import(containerd, "system", archives.oci_archive([(f"{repo}:c", img)]))
    containerd.ctr("images", "tag", f"{repo}:c", img.config_digest, namespace="system")
    rm(image_pb2.ImageServiceRemoveRequest(containerd=SYSTEM, image_ref=img.config_digest))
    assert names() == set()


@pytest.mark.parametrize(
    ("driver", "namespace", "fragment"),
    [
        (1, 0, "unknown containerd namespace"),  # CRI + NS_UNKNOWN
        (0, 0, "unknown containerd namespace"),  # empty instance
        (0, 2, "does not serve the CRI namespace"),  # CONTAINERD + NS_CRI
        (7, 1, "unknown containerd driver"),
        (1, 9, "unknown containerd namespace"),
    ],
)
def test_instance_invalid_argument(daemon, driver: int, namespace: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    from imaged.pb.common import common_pb2
    from imaged.pb.machine import image_pb2

    inst = common_pb2.ContainerdInstance(driver=driver, namespace=namespace)  # type: ignore[arg-type]
    for call in (
        lambda: list(daemon.images.List(image_pb2.ImageServiceListRequest(containerd=inst))),
        lambda: daemon.images.Remove(image_pb2.ImageServiceRemoveRequest(containerd=inst, image_ref="x")),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in e.value.details()


def test_list_5000_images(daemon, containerd) -> None:  # type: ignore[no-untyped-def]
    """Thousands of records fit: the client raises containerd's 4 MB default receive limit."""
    import asyncio

    from imaged.containerd import Containerd
    from imaged.containerd.images import ImageStore
    from imaged.pb.containerd.types import descriptor_pb2
    from imaged.pb.machine import image_pb2

    img = archives.simple_image("many")
    ctr_import(containerd, "k8s.io", archives.oci_archive([("registry.test/many/base:v1", img)]))
    target = descriptor_pb2.Descriptor(
        media_type=archives.OCI_MANIFEST, digest=img.digest, size=len(img.manifest)
    )
    long = "x" * 150  # long names make the List response well over 4 MB

    async def create() -> None:
        cd = Containerd(containerd.socket)
        store = ImageStore(cd.ns("k8s.io"))
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await store.put(f"registry.test/many/{long}-{i}:v1", target, {"k": "v" * 500})

        await asyncio.gather(*(one(i) for i in range(5000)))
        await cd.close()

    asyncio.run(create())
    try:
        listed = [
            r
            for r in daemon.images.List(image_pb2.ImageServiceListRequest(containerd=CRI), timeout=120)
            if r.name.startswith("registry.test/many/x")
        ]
        assert len(listed) == 5000
        assert all(r.size == img.size for r in listed)
    finally:

        async def cleanup() -> None:
            cd = Containerd(containerd.socket)
            store = ImageStore(cd.ns("k8s.io"))
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with sem:
                    await store.delete(f"registry.test/many/{long}-{i}:v1", sync=False)

            await asyncio.gather(*(one(i) for i in range(5000)))
            await cd.close()

        asyncio.run(cleanup())


def test_stubs_match_protos(tmp_path: pathlib.Path) -> None:
    """The committed src/imaged/pb is exactly what `make protos` generates."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        genprotos = importlib.import_module("genprotos")
    finally:
        sys.path.remove(str(REPO / "tools"))
    out = tmp_path / "pb"
    genprotos.generate(out, "imaged.pb")
    committed = REPO / "src" / "imaged" / "pb"
    gen_files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    com_files = {
        p.relative_to(committed): p.read_bytes()
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(gen_files) == set(com_files), "run `make protos`"
    stale = [str(p) for p in gen_files if gen_files[p] != com_files[p]]
    assert not stale, f"stubs differ from protos/ (run `make protos`): {stale}"
