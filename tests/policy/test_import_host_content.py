"""Issue 19.5: an Import records only images the host can run, complete.

The attack: an index whose only child has no platform, with the child's config and layers left
out of the archive, was imported: the record existed, `ctr run` could not run it, and nothing said
so. Now the host platform's manifest, config and layers must all be in the archive, or the import
is INVALID_ARGUMENT naming what is missing, and leaves nothing behind."""

from __future__ import annotations

import json

import grpc

from tests.archive import builders as B
from tests.policy.conftest import import_bytes, no_leftovers, records, refused
from tests.support import archives

LAYOUT = B.M("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def index_archive(name: str, children: list[dict], blobs: dict[str, bytes]) -> bytes:  # type: ignore[type-arg]
    index = B.index_json(children)
    top = {
        "mediaType": archives.OCI_INDEX,
        "digest": archives.sha(index),
        "size": len(index),
        "annotations": {"io.containerd.image.name": name},
    }
    members = [LAYOUT, B.M("index.json", B.index_json([top]))]
    members += [B.M(B.blob_name(d), b) for d, b in {**blobs, archives.sha(index): index}.items()]
    return B.tar(members)


def test_index_child_without_platform_and_content_is_refused(start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start({})
    img = B.host_image("no-platform-child")
    child = img.descriptor()
    del child["platform"]
    name = "registry.test/hostcontent/noplatform:v1"
    data = index_archive(name, [child], {img.digest: img.manifest})  # no config, no layers
    e = refused(lambda: import_bytes(d, data))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert img.config_digest in (e.details() or "") and "not in the archive" in (e.details() or ""), (
        e.details()
    )
    assert name not in records(d)
    no_leftovers(containerd)


def test_host_layers_must_be_in_the_archive(start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start({})
    img = B.host_image("missing-layer")
    name = "registry.test/hostcontent/layer:v1"
    blobs = {k: v for k, v in img.blobs().items() if k != img.layers[1].digest}
    e = refused(lambda: import_bytes(d, index_archive(name, [img.descriptor()], blobs)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert img.layers[1].digest in (e.details() or ""), e.details()
    assert name not in records(d)
    no_leftovers(containerd)


def test_host_config_and_unknown_platform_entries_must_be_in_the_archive(start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start({})
    img, foreign = B.host_image("missing-config"), B.foreign_image("missing-config-other")
    name = "registry.test/hostcontent/config:v1"
    blobs = {k: v for k, v in img.blobs().items() if k != img.config_digest}
    e = refused(lambda: import_bytes(d, index_archive(name, [img.descriptor()], blobs)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert img.config_digest in (e.details() or "") and "not in the archive" in (e.details() or ""), (
        e.details()
    )
    # Another platform's image and an entry naming no platform that is not there: the latter may
    # be the host's, so the archive is incomplete.
    stray = foreign.descriptor()
    unknown = img.descriptor()
    del unknown["platform"]
    e = refused(lambda: import_bytes(d, index_archive(name, [stray, unknown], foreign.blobs())))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert f"the manifest for no platform ({img.digest}) is not in the archive" in (e.details() or "")
    assert name not in records(d)
    no_leftovers(containerd)
    # Other platforms only, complete: kept, not unpacked (as before).
    assert import_bytes(d, index_archive(name, [stray], foreign.blobs())) == name
    assert json.loads(foreign.config)["architecture"] == B.other_arch()
