"""Signature discovery against an in-memory registry holding the vectors' real manifests."""

from __future__ import annotations

import json

import pytest

from imaged.errors import DataLoss, Unauthenticated, Unavailable
from imaged.registry.reference import parse
from imaged.verify import discovery
from imaged.verify.discovery import discover_legacy, discover_referrers
from imaged.verify.material import BundleSignature, SimpleSigning
from tests.verify import seeds
from tests.verify.fake_registry import FakeRegistry
from tests.verify.vectors import legacy_signature, vdir


def ref(repo: str, digest: str):  # type: ignore[no-untyped-def]
    return parse(f"{repo}@{digest}")


async def test_a2_real_sig_manifest() -> None:
    reg = FakeRegistry()
    repo, digest = seeds.a2(reg)
    found = await discover_legacy(reg, ref(repo, digest), digest)
    assert found.stage == f"legacy signature tag {seeds.sig_tag(digest)}"
    [sig] = found.signatures
    assert isinstance(sig, SimpleSigning)
    assert sig.payload == (vdir("A2") / "payload.json").read_bytes()
    assert sig.annotations["dev.sigstore.cosign/certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert sig.how == "verified via legacy signature"
    assert found.notes == []


async def test_c3_multi_layer_sig_manifest() -> None:
    reg = FakeRegistry()
    repo, digest = seeds.c3(reg, "multi-alice-bob-charlie")
    found = await discover_legacy(reg, ref(repo, digest), digest)
    assert [s.where for s in found.signatures] == [
        f"legacy signature {seeds.sig_tag(digest)} layer {i}" for i in range(3)
    ]
    # the three layers share one payload blob: fetched once
    assert len({s.payload for s in found.signatures if isinstance(s, SimpleSigning)}) == 1
    assert sum(1 for c in reg.calls if c[0] == "get_blob") == 1


@pytest.mark.parametrize("api", [True, False])
async def test_c5_cosign2_referrer(api: bool) -> None:
    reg = FakeRegistry(referrers_api=api)
    repo, digest = seeds.c5(reg, "oci11")
    found = await discover_referrers(reg, ref(repo, digest), digest)
    assert found.stage == ("referrers API" if api else f"referrers tag {seeds.referrers_tag(digest)}")
    [sig] = found.signatures
    assert isinstance(sig, SimpleSigning)
    assert sig.how == (
        "verified via legacy signature referrer with digest "
        "sha256:597cc6be74829b950036142f8b8ac8f14469658185ca3fb17e51eabcdb74c977"
    )
    assert sig.payload == (vdir("C5") / "oci11" / "payload.json").read_bytes()


@pytest.mark.parametrize("vid", ["B1", "B2", "B3", "B4"])
@pytest.mark.parametrize("api", [True, False])
async def test_bundle_referrers(vid: str, api: bool) -> None:
    reg = FakeRegistry(referrers_api=api)
    repo, digest, referrer = seeds.bundle_vector(reg, vid)
    found = await discover_referrers(reg, ref(repo, digest), digest)
    [sig] = found.signatures
    assert isinstance(sig, BundleSignature)
    assert sig.bundle == (vdir(vid) / "bundle.sigstore.json").read_bytes()
    assert sig.how == f"verified via bundle referrer with digest {referrer}"
    assert ("referrers", digest) in reg.calls
    tag_fetched = ("get_manifest", seeds.referrers_tag(digest)) in reg.calls
    assert tag_fetched is (not api)  # the fallback tag only without the API


async def test_referrer_for_another_image_is_ignored() -> None:
    """The fallback tag is writable by anyone who can push: a referrer of another image in it
    must not count (here: B2's genuine referrer planted in B4's referrers tag)."""
    reg = FakeRegistry(referrers_api=False)
    repo, digest, _ = seeds.bundle_vector(reg, "B4")
    b2 = vdir("B2")
    planted = reg.put_manifest(repo, next(b2.glob("referrer-manifest.*.json")).read_bytes())
    reg.put_blob((b2 / "bundle.sigstore.json").read_bytes())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": planted,
                "size": len(reg.manifests[(repo, planted)]),
            }
        ],
    }
    reg.put_json(repo, index, tag=seeds.referrers_tag(digest))
    found = await discover_referrers(reg, ref(repo, digest), digest)
    assert found.signatures == []
    assert found.notes == [
        f"referrer {planted} refers to "
        "sha256:c6fc458cc8718628e8fb8b699d2991056590e0fed4ea0d6f86583705202bdce4, "
        f"not to the image {digest}; ignored"
    ]


async def test_no_referrers_anywhere() -> None:
    reg = FakeRegistry(referrers_api=False)
    repo, digest = seeds.a2(reg)
    found = await discover_referrers(reg, ref(repo, digest), digest)
    assert found.signatures == []
    assert found.notes == [f"no referrers API and no referrers tag {seeds.referrers_tag(digest)}"]


async def test_api_lists_only_other_artifacts() -> None:
    reg = FakeRegistry()
    repo, digest = seeds.a2(reg)
    reg.put_json(
        repo,
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/spdx+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "size": 2,
                "digest": reg.put_blob(b"{}"),
            },
            "layers": [],
            "subject": {"mediaType": "x", "digest": digest, "size": 1},
        },
    )
    found = await discover_referrers(reg, ref(repo, digest), digest)
    assert found.signatures == []
    assert found.notes == [
        "referrers API lists 1 referrer(s) that are not signatures",
        "referrers API: no signature referrers",
    ]


async def test_no_legacy_tag() -> None:
    reg = FakeRegistry()
    repo, digest, _ = seeds.bundle_vector(reg, "B1")
    found = await discover_legacy(reg, ref(repo, digest), digest)
    assert found.signatures == [] and found.notes == [f"no legacy signature tag {seeds.sig_tag(digest)}"]


async def test_non_signature_layers_missing_blobs_and_big_layers_are_noted() -> None:
    reg = FakeRegistry()
    repo = "r.io/app"
    digest = reg.put_manifest(
        repo,
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"a","digest":"sha256:' + b"1" * 64 + b'","size":1},"layers":[]}',
    )
    good = legacy_signature(vdir("C1") / "valid", certificate=None, chain=None, rekor=None)
    seeds.put_legacy(reg, repo, digest, [good, good])
    body = json.loads(reg.manifests[(repo, reg.tags[(repo, seeds.sig_tag(digest))])])
    body["layers"][0]["mediaType"] = "text/plain"
    body["layers"][1]["digest"] = "sha256:" + "2" * 64
    body["layers"].append(dict(body["layers"][1], size=discovery.MAX_BLOB_SIZE + 1))
    reg.put_json(repo, body, tag=seeds.sig_tag(digest))
    found = await discover_legacy(reg, ref(repo, digest), digest)
    tag = seeds.sig_tag(digest)
    assert found.signatures == []
    assert sorted(found.notes) == sorted(
        [
            f"{tag} layer 0 is text/plain, not a signature",
            f"{tag} blob sha256:{'2' * 64} is missing",
            f"{tag} layer 2 is {discovery.MAX_BLOB_SIZE + 1} bytes, "
            f"over the {discovery.MAX_BLOB_SIZE} byte limit",
        ]
    )


async def test_signature_count_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "MAX_SIGNATURES", 4)
    reg = FakeRegistry()
    repo, digest = "r.io/app", "sha256:" + "3" * 64
    seeds.put_legacy(reg, repo, digest, [SimpleSigning(b"payload %d" % i, {}) for i in range(10)])
    found = await discover_legacy(reg, ref(repo, digest), digest)
    assert len(found.signatures) == 4
    assert found.notes == [f"{seeds.sig_tag(digest)} has 10 signatures; only the first 4 are considered"]
    assert sum(1 for c in reg.calls if c[0] == "get_blob") == 4


async def test_malformed_signature_manifest_is_a_note() -> None:
    reg = FakeRegistry()
    repo, digest = "r.io/app", "sha256:" + "4" * 64
    reg.put_manifest(repo, b'{"schemaVersion": 2, "layers": "nope"}', tag=seeds.sig_tag(digest))
    found = await discover_legacy(reg, ref(repo, digest), digest)
    assert found.signatures == []
    assert found.notes[0].startswith(f"legacy signature tag {seeds.sig_tag(digest)} is not usable:")


@pytest.mark.parametrize(
    "error", [Unavailable("registry down"), Unauthenticated("who are you"), DataLoss("digest mismatch")]
)
@pytest.mark.parametrize("method", ["referrers", "get_manifest", "get_blob"])
async def test_registry_failures_are_errors_not_findings(error: Exception, method: str) -> None:
    reg = FakeRegistry(referrers_api=False)
    repo, digest, _ = seeds.bundle_vector(reg, "B2")
    reg.errors[method] = error  # type: ignore[assignment]
    with pytest.raises(type(error)):
        await discover_referrers(reg, ref(repo, digest), digest)


async def test_parallel_fetch_cancels_the_rest_on_error() -> None:
    reg = FakeRegistry()
    repo, digest = "r.io/app", "sha256:" + "5" * 64
    good = legacy_signature(vdir("C1") / "valid", certificate=None, chain=None, rekor=None)
    seeds.put_legacy(reg, repo, digest, [good] * 3)
    reg.errors["get_blob"] = Unavailable("blob store down")
    with pytest.raises(Unavailable, match="blob store down"):
        await discover_legacy(reg, ref(repo, digest), digest)
