"""A corpus of bad archives: each is refused with INVALID_ARGUMENT and a message naming what is wrong,
and none leaves a lease, an ingest or an image behind."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from imaged.archive import ImportLimits, import_archive
from imaged.errors import InvalidArgument
from imaged.oci import mediatypes as mt
from imaged.oci.platform import host_platform
from tests.archive import builders as B
from tests.archive.builders import M
from tests.archive.conftest import OWNER, Importer
from tests.support import archives as A

NAMESPACE = "k8s.io"
NAME = "registry.test/bad/image:v1"
LAYOUT = M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def small(marker: str) -> A.Image:
    """A two-layer image for the host (tiny layers, so the corpus stays fast)."""
    host = host_platform()
    layers = [A.layer({"etc/marker": marker.encode()}), A.layer({"etc/second": b"2"})]
    variant = host.variant if host.architecture == "arm64" else ""
    return A.Image(layers, cmd=["/bin/echo", marker], architecture=host.architecture, variant=variant)


def oci(img: A.Image, **annotations: str) -> list[M]:
    return B.oci_members([(annotations or {"io.containerd.image.name": NAME}, img)])


def without(members: list[M], name: str) -> list[M]:
    assert any(m.name == name for m in members), name
    return [m for m in members if m.name != name]


def replace(members: list[M], name: str, new: M) -> list[M]:
    assert any(m.name == name for m in members), name
    return [new if m.name == name else m for m in members]


def docker(img: A.Image, tags: list[str] | None = None) -> list[M]:
    return B.docker_members([(tags if tags is not None else [NAME], img)])


def docker_with_layer_member(new: M) -> tuple[bytes, str]:
    """A docker-save archive whose first layer path is `new` (a link, FIFO, ...)."""
    img = small("docker-layer-kind")
    members = docker(img)
    first = img.layers[0].diff_id.removeprefix("sha256:") + "/layer.tar"
    return B.tar(replace(members, first, M(first, new.data, new.type, new.linkname))), first


def oci_with_layer_blob(new: M) -> tuple[bytes, str]:
    """An OCI layout whose first layer blob is `new` (a link, device, FIFO, ...)."""
    img = small("oci-blob-kind")
    name = B.blob_name(img.layers[0].digest)
    return B.tar(replace(oci(img), name, M(name, new.data, new.type, new.linkname))), name


def truncated_mid_blob() -> tuple[bytes, str]:
    img = small("truncated")
    data = B.tar(oci(img))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        biggest = max(tf.getmembers(), key=lambda m: m.size)
    return data[: biggest.offset_data + biggest.size // 2], f"it ends inside member '{biggest.name}'"


def truncated_header() -> tuple[bytes, str]:
    data = B.tar(oci(small("truncated-header")))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        second = tf.getmembers()[1]
    return data[: second.offset + 100], "inside the tar header after member 'oci-layout'"


def bad_checksum() -> tuple[bytes, str]:
    data = bytearray(B.tar(oci(small("checksum"))))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        second = tf.getmembers()[1]
    data[second.offset + 148 : second.offset + 156] = b"0000000\0"
    return bytes(data), "tar header after member 'oci-layout' has a bad checksum"


def malformed_pax() -> tuple[bytes, str]:
    good = B.tar(oci(small("pax")))
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 12
    header = info.tobuf(tarfile.USTAR_FORMAT)
    return header + b"99 path=x\n\0\0".ljust(512, b"\0") + good, "malformed PAX header"


def blob_mismatch() -> tuple[bytes, str]:
    img = small("mismatch")
    layer = img.layers[1]
    members = replace(
        oci(img), B.blob_name(layer.digest), M(B.blob_name(layer.digest), layer.blob[:-1] + b"X")
    )
    return B.tar(members), f"archive member {B.blob_name(layer.digest)} does not match its name"


def size_mismatch() -> tuple[bytes, str]:
    img = small("size")
    manifest = json.loads(img.manifest)
    manifest["layers"][0]["size"] += 1
    data = json.dumps(manifest).encode()
    entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": A.sha(data),
        "size": len(data),
        "annotations": {"io.containerd.image.name": NAME},
    }
    blobs = {**img.blobs(), A.sha(data): data}
    members = [LAYOUT, M("index.json", B.index_json([entry]))]
    members += [M(B.blob_name(d), b) for d, b in blobs.items()]
    layer = img.layers[0]
    want = f"blob {layer.digest} is {len(layer.blob)} bytes in the archive, but its descriptor says"
    return B.tar(members), want


def manifest_doc(img: A.Image, change: Callable[[dict], None]) -> tuple[list[M], str, int]:  # type: ignore[type-arg]
    """An OCI layout whose only entry is a manifest edited by `change` (members, digest, size)."""
    manifest = json.loads(img.manifest)
    change(manifest)
    data = json.dumps(manifest).encode()
    entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": A.sha(data),
        "size": len(data),
        "annotations": {"io.containerd.image.name": NAME},
    }
    blobs = {**img.blobs(), A.sha(data): data}
    members = [LAYOUT, M("index.json", B.index_json([entry]))]
    return members + [M(B.blob_name(d), b) for d, b in blobs.items()], A.sha(data), len(data)


def too_many_layers() -> tuple[bytes, str]:
    img = small("layers")
    fake = {"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:" + "ab" * 32, "size": 10}
    members, digest, _ = manifest_doc(img, lambda m: m.__setitem__("layers", [fake] * 1001))
    return B.tar(members), f"index.json entry 0 ({digest}) has 1001 layers, over the limit of 1000"


def huge_manifest() -> tuple[bytes, str]:
    img = small("huge")
    members, digest, size = manifest_doc(
        img, lambda m: m.__setitem__("annotations", {"pad": "x" * (4 << 20)})
    )
    return B.tar(members), f"{digest} is {size} bytes, over the 4194304 byte limit"


def schema1() -> tuple[bytes, str]:
    members, _, _ = manifest_doc(small("schema1"), lambda m: m.__setitem__("schemaVersion", 1))
    return B.tar(members), "is a Docker schema 1 manifest"


class PatchedConfig(A.Image):
    raw_config: bytes = b""

    @property
    def config(self) -> bytes:  # type: ignore[override]
        return self.raw_config


def with_config(img: A.Image, change: Callable[[dict], None]) -> A.Image:  # type: ignore[type-arg]
    doc = json.loads(img.config)
    change(doc)
    patched = PatchedConfig(img.layers, img.cmd, img.docker, img.architecture, img.os, img.variant)
    patched.raw_config = json.dumps(doc).encode()
    return patched


def wrong_diff_id() -> tuple[bytes, str]:
    img = with_config(
        small("diffid"), lambda c: c["rootfs"]["diff_ids"].__setitem__(1, "sha256:" + "cd" * 32)
    )
    return B.tar(oci(img)), f"layer {img.layers[1].digest} unpacks to {img.layers[1].diff_id}"


def diff_id_count() -> tuple[bytes, str]:
    img = with_config(small("diffcount"), lambda c: c["rootfs"]["diff_ids"].pop())
    return B.tar(oci(img)), "lists 1 diff_ids for 2 layers"


def raw_pax(records: bytes) -> bytes:
    """A PAX extended header (`x`) with `records` as its data, as a writer of hostile archives makes it."""
    info = tarfile.TarInfo("PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(records)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    n = len(str(n + len(str(n)))) + len(body)  # the length counts its own digits
    return f"{n}{body.decode()}".encode()


def stacked_extension_headers() -> tuple[bytes, str]:
    # Each header under the 1 MiB limit, several together over it, all before one member.
    headers = b"".join(raw_pax(pax_record(f"k{i}", "v" * (400 << 10))) for i in range(3))
    return headers + B.tar(oci(small("stacked"))), "bytes of extension headers before the member"


def long_name() -> tuple[bytes, str]:
    return B.tar([M("x" * 5000, b""), *oci(small("long-name"))], format=tarfile.PAX_FORMAT), "over 4096 bytes"


def nested_json(document: str) -> tuple[bytes, str]:
    data = b"[" * 100_000 if document == "manifest.json" else b'{"a":' * 100_000
    members = docker(small("nested")) if document == "manifest.json" else oci(small("nested"))
    return B.tar(replace(members, document, M(document, data))), "nested too deeply"


def config_with_too_many_diff_ids() -> tuple[bytes, str]:
    img = with_config(
        small("many-diffids"), lambda c: c["rootfs"].__setitem__("diff_ids", ["sha256:" + "ab" * 32] * 1001)
    )
    return B.tar(oci(img)), "has 1001 layers, over the limit of 1000"


def bad_layer(blob: bytes) -> tuple[bytes, str]:
    """A layer blob correctly named by its digest whose bytes containerd cannot apply."""
    img = small("bad-layer")
    img.layers[1] = A.Layer(b"not what the blob holds", blob, A.OCI_LAYER_GZIP)
    return B.tar(oci(img)), f"layer 1 ({img.layers[1].digest}) cannot be unpacked"


def host_manifest_missing() -> tuple[bytes, str]:
    host, other = small("idx-host"), B.foreign_image("idx-other")
    index = B.index_json([host.descriptor(), other.descriptor()])
    top = {
        "mediaType": mt.OCI_INDEX,
        "digest": A.sha(index),
        "size": len(index),
        "annotations": {"io.containerd.image.name": NAME},
    }
    blobs = {**other.blobs(), A.sha(index): index}
    members = [LAYOUT, M("index.json", B.index_json([top]))] + [
        M(B.blob_name(d), b) for d, b in blobs.items()
    ]
    return B.tar(members), f"({host.digest}) is not in the archive"


def two_images_one_name() -> tuple[bytes, str]:
    a, b = small("conflict-a"), small("conflict-b")
    members = B.oci_members(
        [({"io.containerd.image.name": NAME}, a), ({"io.containerd.image.name": NAME}, b)]
    )
    return B.tar(members), f"gives the name {NAME} to two different images"


def many_members() -> bytes:
    """100 001 directory members: over the default member limit."""
    info = tarfile.TarInfo("d")
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info.tobuf(tarfile.USTAR_FORMAT) * 100_001  # a name may repeat; every header counts


@dataclass
class Case:
    id: str
    build: Callable[[], tuple[bytes, str]]
    limits: ImportLimits | None = None


def simple(data: Callable[[], bytes], fragment: str) -> Callable[[], tuple[bytes, str]]:
    return lambda: (data(), fragment)


def _layer_path(img: A.Image, i: int) -> str:
    return img.layers[i].diff_id.removeprefix("sha256:") + "/layer.tar"


CASES = [
    # Not an archive at all.
    Case("empty", simple(lambda: b"", "the archive is empty")),
    Case("tiny", simple(lambda: b"hello", "it holds only 5 bytes")),
    Case(
        "not-a-tar", simple(lambda: b"this is no archive\n" * 64, "its first 512 bytes are not a tar header")
    ),
    Case("end-blocks-only", simple(lambda: b"\0" * 10240, "holds no members")),
    Case("xz", simple(lambda: b"\xfd7zXZ\x00" + b"\0" * 600, "the archive is xz-compressed")),
    Case("corrupt-gzip", simple(lambda: b"\x1f\x8b\x08\x00" + b"\xff" * 600, "gzip stream is corrupt")),
    Case("corrupt-zstd", simple(lambda: b"\x28\xb5\x2f\xfd" + b"\xff" * 600, "zstd stream is corrupt")),
    # Broken tar structure.
    Case("truncated-mid-blob", truncated_mid_blob),
    Case("truncated-header", truncated_header),
    Case("truncated-gzip", lambda: (B.gz(truncated_mid_blob()[0]), "the archive is truncated")),
    Case("bad-checksum", bad_checksum),
    Case("malformed-pax", malformed_pax),
    Case("too-many-members", simple(many_members, "the archive has more than 100000 members")),
    # Paths and member types.
    Case(
        "absolute-path",
        simple(
            lambda: B.tar([M("/etc/passwd", b"x"), *oci(small("abs"))]),
            "archive member '/etc/passwd' has an absolute path",
        ),
    ),
    Case(
        "dotdot-path",
        simple(lambda: B.tar([M("blobs/../../x", b"x"), *oci(small("dotdot"))]), "'..' path component"),
    ),
    Case(
        "bad-blob-name",
        simple(
            lambda: B.tar([*oci(small("blobname")), M("blobs/sha256/xyz", b"x")]),
            "archive member 'blobs/sha256/xyz' is not named by a valid digest",
        ),
    ),
    Case(
        "blob-symlink",
        lambda: (
            (r := oci_with_layer_blob(M("", type=tarfile.SYMTYPE, linkname="/etc/passwd")))[0],
            f"archive member '{r[1]}' is a symbolic link to '/etc/passwd'; blobs must be regular files",
        ),
    ),
    Case(
        "blob-hardlink",
        lambda: (
            (r := oci_with_layer_blob(M("", type=tarfile.LNKTYPE, linkname="oci-layout")))[0],
            f"archive member '{r[1]}' is a hard link",
        ),
    ),
    Case(
        "blob-char-device",
        lambda: (
            (r := oci_with_layer_blob(M("", type=tarfile.CHRTYPE)))[0],
            f"archive member '{r[1]}' is a character device",
        ),
    ),
    Case(
        "blob-fifo",
        lambda: (
            (r := oci_with_layer_blob(M("", type=tarfile.FIFOTYPE)))[0],
            f"archive member '{r[1]}' is a FIFO",
        ),
    ),
    Case(
        "docker-layer-symlink-outside",
        lambda: (
            (r := docker_with_layer_member(M("", type=tarfile.SYMTYPE, linkname="../../etc/passwd")))[0],
            f"archive member '{r[1]}' is a symbolic link to '../../etc/passwd', outside the archive",
        ),
    ),
    Case(
        "docker-layer-symlink-absolute",
        lambda: (
            (r := docker_with_layer_member(M("", type=tarfile.SYMTYPE, linkname="/etc/passwd")))[0],
            f"archive member '{r[1]}' is a symbolic link to the absolute path '/etc/passwd'",
        ),
    ),
    Case(
        "docker-layer-hardlink",
        lambda: (
            (r := docker_with_layer_member(M("", type=tarfile.LNKTYPE, linkname="manifest.json")))[0],
            f"archive member '{r[1]}' is a hard link; expected a regular file",
        ),
    ),
    Case(
        "docker-layer-fifo",
        lambda: (
            (r := docker_with_layer_member(M("", type=tarfile.FIFOTYPE)))[0],
            f"archive member '{r[1]}' is a FIFO; expected a regular file",
        ),
    ),
    Case(
        "docker-symlink-loop",
        lambda: (
            B.tar(
                [
                    *docker(img := small("loop"))[:-1],
                    M(f"{(p := _layer_path(img, 0))}", type=tarfile.SYMTYPE, linkname="loop-b"),
                    M(p.split("/")[0] + "/loop-b", type=tarfile.SYMTYPE, linkname="layer.tar"),
                    docker(img)[-1],
                ]
            ),
            "too many symbolic links",
        ),
    ),
    # Metadata documents.
    Case(
        "neither-format",
        simple(lambda: B.tar([M("hello.txt", b"hi")]), "the archive is not an image archive"),
    ),
    Case(
        "index-without-layout",
        simple(
            lambda: B.tar(without(oci(small("nolayout")), "oci-layout")),
            "has index.json but no oci-layout file",
        ),
    ),
    Case(
        "layout-version",
        simple(
            lambda: B.tar(
                replace(oci(small("ver")), "oci-layout", M("oci-layout", b'{"imageLayoutVersion":"2.0.0"}'))
            ),
            "oci-layout has imageLayoutVersion '2.0.0'",
        ),
    ),
    Case(
        "layout-without-index",
        simple(
            lambda: B.tar(without(oci(small("noindex")), "index.json")),
            "has an oci-layout file but no index.json",
        ),
    ),
    Case(
        "index-not-json",
        simple(
            lambda: B.tar(replace(oci(small("ij")), "index.json", M("index.json", b"{oops"))),
            "index.json is not valid JSON",
        ),
    ),
    Case(
        "index-wrong-shape",
        simple(
            lambda: B.tar(
                replace(
                    oci(small("ishape")),
                    "index.json",
                    M("index.json", b'{"schemaVersion":2,"manifests":{"a":1}}'),
                )
            ),
            "index.json has no manifests list",
        ),
    ),
    Case(
        "index-entry-no-digest",
        simple(
            lambda: B.tar(
                replace(
                    oci(small("idig")),
                    "index.json",
                    M("index.json", B.index_json([{"mediaType": mt.OCI_MANIFEST, "size": 3}])),
                )
            ),
            "index.json entry 0: descriptor has no digest",
        ),
    ),
    Case(
        "index-json-too-big",
        simple(
            lambda: B.tar(
                replace(oci(small("ibig")), "index.json", M("index.json", b" " * (4 * 1024 * 1024 + 1)))
            ),
            "archive member index.json is 4194305 bytes, over the 4194304 byte limit",
        ),
    ),
    Case(
        "entry-is-a-layer",
        lambda: (
            B.tar(
                replace(
                    oci(img := small("elayer")),
                    "index.json",
                    M(
                        "index.json",
                        B.index_json(
                            [
                                {
                                    "mediaType": mt.OCI_LAYER_GZIP,
                                    "digest": img.layers[0].digest,
                                    "size": len(img.layers[0].blob),
                                    "annotations": {"io.containerd.image.name": NAME},
                                }
                            ]
                        ),
                    ),
                )
            ),
            f"({img.layers[0].digest}) has media type '{mt.OCI_LAYER_GZIP}', "
            "which is not an image manifest or index",
        ),
    ),
    Case(
        "manifest-json-not-json",
        simple(
            lambda: B.tar(replace(docker(small("mj")), "manifest.json", M("manifest.json", b"[{"))),
            "manifest.json is not valid JSON",
        ),
    ),
    Case(
        "manifest-json-object",
        simple(
            lambda: B.tar(
                replace(docker(small("mo")), "manifest.json", M("manifest.json", b'{"Config":"x"}'))
            ),
            "manifest.json is not a JSON list of images",
        ),
    ),
    Case(
        "manifest-json-no-config",
        simple(
            lambda: B.tar(
                replace(
                    docker(small("mnc")),
                    "manifest.json",
                    M("manifest.json", json.dumps([{"RepoTags": [NAME], "Layers": []}]).encode()),
                )
            ),
            "manifest.json entry 0 has no Config path",
        ),
    ),
    Case(
        "manifest-json-bad-tag",
        simple(
            lambda: B.tar(docker(small("btag"), ["Bad:Tag:x"])),
            "manifest.json entry 0 RepoTags: invalid image reference 'Bad:Tag:x'",
        ),
    ),
    # Blobs named but missing, or not what their names say.
    Case(
        "manifest-missing",
        lambda: (
            B.tar(without(oci(img := small("mmiss")), B.blob_name(img.digest))),
            f"index.json entry 0 ({img.digest}): blob {img.digest} is not in the archive",
        ),
    ),
    Case(
        "config-missing",
        lambda: (
            B.tar(without(oci(img := small("cmiss")), B.blob_name(img.config_digest))),
            f"config {img.config_digest}: blob {img.config_digest} is not in the archive",
        ),
    ),
    Case(
        "layer-missing",
        lambda: (
            B.tar(without(oci(img := small("lmiss")), B.blob_name(img.layers[1].digest))),
            f"layer 1: blob {img.layers[1].digest} is not in the archive",
        ),
    ),
    Case("blob-digest-mismatch", blob_mismatch),
    Case("blob-size-mismatch", size_mismatch),
    Case("host-manifest-missing", host_manifest_missing),
    Case(
        "docker-layer-missing",
        lambda: (
            B.tar(without(docker(img := small("dlm")), p := _layer_path(img, 1))),
            f"manifest.json entry 0 layer 1: '{p}' is not in the archive",
        ),
    ),
    Case(
        "docker-config-missing",
        lambda: (
            B.tar(
                without(docker(img := small("dcm")), p := img.config_digest.removeprefix("sha256:") + ".json")
            ),
            f"manifest.json entry 0 Config: '{p}' is not in the archive",
        ),
    ),
    Case(
        "docker-layer-not-tar",
        lambda: (
            B.tar(
                replace(
                    docker(img := small("dnt")), p := _layer_path(img, 0), M(p, b"plain text, no tar" * 40)
                )
            ),
            f"manifest.json entry 0 layer 0 ('{p}') is neither a tar archive "
            "nor a gzip- or zstd-compressed one",
        ),
    ),
    # Images that cannot be what they claim.
    Case("too-many-layers", too_many_layers),
    Case("manifest-over-4mib", huge_manifest),
    Case("schema1-manifest", schema1),
    Case("diff-id-count", diff_id_count),
    Case("layer-diff-id-mismatch", wrong_diff_id),
    Case("layer-not-a-tar", lambda: bad_layer(b"plain text, no tar " * 64)),
    Case(
        "layer-corrupt-gzip",
        lambda: bad_layer(B.gz(A.tar_bytes({"a": os.urandom(6000)}))[:-400] + bytes(400)),
    ),
    Case("name-conflict", two_images_one_name),
    Case(
        "name-digest-mismatch",
        lambda: (
            B.tar(
                oci(
                    small("ndm"),
                    **{"io.containerd.image.name": f"registry.test/bad/image@sha256:{'ef' * 32}"},
                )
            ),
            f"is named registry.test/bad/image@sha256:{'ef' * 32}, but the image's digest is",
        ),
    ),
    # Nothing to import.
    Case(
        "bare-tag-only",
        simple(
            lambda: B.tar(oci(small("bare"), **{"org.opencontainers.image.ref.name": "v1"})),
            "no images imported from archive",
        ),
    ),
    Case(
        "docker-untagged",
        simple(lambda: B.tar(docker(small("untagged"), [])), "no images imported from archive"),
    ),
    # What a hostile archive could make the daemon keep or compute: bounded.
    Case("stacked-extension-headers", stacked_extension_headers),
    Case("member-name-over-path-max", long_name),
    Case(
        "names-over-their-total",
        simple(lambda: B.tar(oci(small("names"))), "member names and link targets total over 100 bytes"),
        ImportLimits(max_names_total=100),
    ),
    Case("nested-manifest-json", lambda: nested_json("manifest.json")),
    Case("nested-index-json", lambda: nested_json("index.json")),
    Case("config-with-too-many-diff-ids", config_with_too_many_diff_ids),
    Case("gzip-checksum-wrong", simple(lambda: B.gz(B.tar(oci(small("crc"))))[:-8] + bytes(8), "corrupt")),
    Case(
        "gzip-ends-early",
        simple(lambda: B.gz(B.tar(oci(small("gz-short"))))[:-6], "gzip stream is truncated"),
    ),
    Case(
        "zstd-ends-early",
        simple(lambda: B.zst(B.tar(oci(small("zs-short"))))[:-6], "zstd stream is truncated"),
    ),
    Case(
        "decompression-bomb",
        simple(
            lambda: B.zst(B.tar([*docker(small("bomb")), M("filler", bytes(16 << 20))])),
            "zstd archive expands over 200 times",
        ),
        ImportLimits(expansion_floor=1 << 20),
    ),
    Case(
        "member-limit-lowered",
        simple(lambda: B.tar(oci(small("lowered"))), "more than 3 members"),
        ImportLimits(max_members=3),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_malformed_archive_is_refused(importer: Importer, case: Case) -> None:
    data, fragment = case.build()
    with pytest.raises(InvalidArgument) as e:
        await importer.run(NAMESPACE, data, limits=case.limits)
    assert fragment in e.value.message, e.value.message
    assert await importer.leftovers(NAMESPACE) == ([], [])


async def test_client_gone_mid_blob_leaves_nothing(importer: Importer) -> None:
    """Cancelled (the client went away) while a blob streams into an open ingest: all cleaned up."""
    img = small("cancelled")
    img.layers[0] = A.layer({"big": os.urandom(600_000)})  # over the in-memory size: streamed to containerd
    data = B.tar(oci(img))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        big = tf.getmember(B.blob_name(img.layers[0].digest))
    stalled = asyncio.Event()

    async def client() -> AsyncIterator[bytes]:
        yield data[: big.offset_data + big.size // 2]
        stalled.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(
        import_archive(importer.cd.ns(NAMESPACE), client(), snapshotter="overlayfs", owner=OWNER)
    )
    await asyncio.wait_for(stalled.wait(), 30)
    leases, ingests = await importer.leftovers(NAMESPACE)
    assert len(leases) == 1 and len(ingests) == 1  # the import holds a lease and an open ingest
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await importer.leftovers(NAMESPACE) == ([], [])


def test_corpus_is_large_and_distinct() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


async def test_nothing_left_behind(importer: Importer) -> None:
    """After the corpus: no lease, no ingest, no image from it, as ctr sees it."""
    ctr = importer.containerd.ctr
    assert ctr("leases", "ls", "-q", namespace=NAMESPACE).stdout.split() == []
    assert ctr("content", "active", namespace=NAMESPACE).stdout.splitlines()[1:] == []
    assert "registry.test/bad" not in ctr("images", "ls", "-q", namespace=NAMESPACE).stdout
    records = await importer.records(NAMESPACE)
    assert not [n for n in records if n.startswith("registry.test/bad")]
