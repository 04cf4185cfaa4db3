"""Fake registries seeded with the vectors' exact manifests and blobs, as each project published them.

Where a vector has no signature manifest (containers/image fixtures use the "dir" format), the
signature layers are wrapped in a `.sig` manifest of ours: the signed material stays exact.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from imaged.verify.material import SIMPLE_SIGNING_MEDIA_TYPE, SimpleSigning
from tests.verify.fake_registry import FakeRegistry
from tests.verify.vectors import vdir


def _put_files(
    reg: FakeRegistry, repo: str, *manifests: pathlib.Path, blobs: tuple[pathlib.Path, ...] = ()
) -> None:
    for m in manifests:
        reg.put_manifest(repo, m.read_bytes())
    for b in blobs:
        reg.put_blob(b.read_bytes())


def sig_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def referrers_tag(digest: str) -> str:
    return digest.replace(":", "-")


def put_legacy(
    reg: FakeRegistry, repo: str, digest: str, layers: list[SimpleSigning], *, media_type: str = ""
) -> str:
    """A cosign `.sig` manifest with one layer per signature (our wrapper, exact payloads)."""
    config = reg.put_blob(b"{}")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": config},
        "layers": [
            {
                "mediaType": media_type or SIMPLE_SIGNING_MEDIA_TYPE,
                "size": len(s.payload),
                "digest": reg.put_blob(s.payload),
                "annotations": dict(s.annotations),
            }
            for s in layers
        ],
    }
    return reg.put_json(repo, doc, tag=sig_tag(digest))


def a2(reg: FakeRegistry) -> tuple[str, str]:
    """connaisseur's real `.sig` manifest (keyless, public-good) for index.docker.io/phbelitz/rekor-test."""
    d = vdir("A2")
    repo = "docker.io/phbelitz/rekor-test"
    digest = reg.put_manifest(repo, (d / "image-manifest.json").read_bytes(), tag="latest")
    sig = next(d.glob("sha256-*.sig.manifest.json"))
    reg.put_manifest(repo, sig.read_bytes(), tag=sig_tag(digest))
    _put_files(reg, repo, blobs=tuple((d / "blobs").iterdir()))
    return repo, digest


def c3(reg: FakeRegistry, which: str) -> tuple[str, str]:
    """connaisseur's `.sig` manifests: `single-alice` or `multi-alice-bob-charlie`."""
    d = vdir("C3") / which
    repo = "docker.io/securesystemsengineering/testimage"
    digest = reg.put_manifest(repo, (d / "image-manifest.json").read_bytes(), tag=which)
    reg.put_manifest(repo, next(d.glob("sha256-*.sig.manifest.json")).read_bytes(), tag=sig_tag(digest))
    _put_files(reg, repo, blobs=tuple((d / "blobs").iterdir()))
    return repo, digest


def c5(reg: FakeRegistry, form: str) -> tuple[str, str]:
    """inspektor-gadget: `legacy` (.sig tag) or `oci11` (cosign 2 referrer + referrers tag index)."""
    d = vdir("C5") / form
    repo = f"ttl.sh/signed_with_cosign_{form}"
    digest = reg.put_manifest(repo, next(d.glob("image-index.*.json")).read_bytes(), tag="latest")
    if form == "legacy":
        reg.put_manifest(repo, next(d.glob("sig-manifest.*.json")).read_bytes(), tag=sig_tag(digest))
    else:
        reg.put_manifest(repo, next(d.glob("referrer-sig-manifest.*.json")).read_bytes())
        reg.put_manifest(
            repo, next(d.glob("referrers-tag-index.*.json")).read_bytes(), tag=referrers_tag(digest)
        )
    _put_files(reg, repo, blobs=(next(d.glob("payload.*.json")), next(d.glob("sig-config.*.json"))))
    return repo, digest


_B_REPOS = {
    "B1": "public.ecr.aws/q3b5f1u4/test-docker-action",
    "B2": "ghcr.io/docker/github-builder-test",
    "B3": "docker.io/crazymax/github-builder-test",
    "B4": "ttl.sh/signed_with_cosign_bundle",
}


def bundle_vector(reg: FakeRegistry, vid: str) -> tuple[str, str, str]:
    """B1-B4: signed manifest, cosign 3 referrer, bundle blob, and the referrers tag index if published.

    Returns (repository, image digest, referrer digest).
    """
    d = vdir(vid)
    repo = _B_REPOS[vid]
    signed = next(d.glob("signed-manifest.*.json"), None) or next(d.glob("image-index.*.json"))
    digest = reg.put_manifest(repo, signed.read_bytes(), tag="latest")
    referrer = reg.put_manifest(repo, next(d.glob("referrer-manifest.*.json")).read_bytes())
    index = next(d.glob("referrers-tag-index.*.json"), None)
    if index is not None:
        reg.put_manifest(repo, index.read_bytes(), tag=referrers_tag(digest))
    else:  # B1/B3 were pushed where the referrers API exists; give the fallback the same content
        entry = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": referrer,
            "size": len(reg.manifests[(repo, referrer)]),
            "artifactType": "application/vnd.oci.empty.v1+json",
        }
        reg.put_json(
            repo,
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [entry],
            },
            tag=referrers_tag(digest),
        )
    reg.put_blob((d / "bundle.sigstore.json").read_bytes())
    return repo, digest, referrer


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()
