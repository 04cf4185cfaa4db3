"""Issue 19.4: Import applies the policy to every name an archive would create.

The attack: an archive naming a protected, verified tag with unsigned content repointed the tag,
and `ctr run` then ran it; deny rules did not apply to imports at all. Now deny refuses, a verify
rule wants a signature of the imported digest (from the archive, as `cosign save` keeps them,
or else from the registry the name points at), and a refused import leaves nothing behind."""

from __future__ import annotations

import grpc

from imaged.verify.layout import MAX_SCANNED
from tests.policy.conftest import (
    import_bytes,
    key_rule,
    no_leftovers,
    pull,
    push_signed,
    records,
    refused,
)
from tests.policy.layouts import signed_layout
from tests.support import archives
from tests.support.sigstore import OciPusher

VERIFIED = "imaged.dev/verified"


def policy(reg, key):  # type: ignore[no-untyped-def]
    return {"rules": [key_rule(f"{reg.host}/prot/*", key), {"image": f"{reg.host}/denied/*", "deny": True}]}


def test_archive_cannot_repoint_a_protected_tag(reg, ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start(policy(reg, key))
    name = f"{reg.host}/prot/app:v1"
    digest = push_signed(reg, ps, key, "prot/app", "import-verified")
    pull(d, name)
    assert records(d)[name].digest == digest
    evil = archives.simple_image("import-evil")
    for data in (archives.oci_archive([(name, evil)]), archives.docker_archive([([name], evil)])):
        e = refused(lambda data=data: import_bytes(d, data))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
        assert "image verification failed" in (e.details() or "") and name in (e.details() or ""), e.details()
        listed = records(d)
        assert listed[name].digest == digest, "the protected tag was repointed"
        assert listed[name].labels[VERIFIED].startswith("verified via legacy signature")
        assert not [n for n, r in listed.items() if r.digest == evil.digest]
        no_leftovers(containerd)


def test_deny_rule_refuses_an_import(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start(policy(reg, key))
    name = f"{reg.host}/denied/app:v1"
    img = archives.simple_image("import-denied")
    # One allowed name beside the denied one: the archive is refused whole.
    data = archives.docker_archive([(["other.example/free/app:v1", name], img)])
    e = refused(lambda: import_bytes(d, data))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    assert "denied by matched rule 1" in (e.details() or ""), e.details()
    assert not [n for n in records(d) if "free/app" in n or "denied/app" in n]
    no_leftovers(containerd)


def test_signatures_saved_beside_the_image_verify_it(reg, ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    """`cosign save` layouts: the registry has never seen these images."""
    d = start(policy(reg, key))
    before = len(reg.requests())
    legacy_img = archives.simple_image("import-saved-legacy")
    name = f"{reg.host}/prot/saved-legacy:v1"
    sig = ps.sign_legacy(legacy_img.digest, f"{reg.host}/prot/saved-legacy", key, tlog=False)
    assert import_bytes(d, signed_layout(name, legacy_img, legacy=[sig])) == name
    label = records(d)[name].labels[VERIFIED]
    assert label.startswith("verified via legacy signature in the archive"), label

    bundle_img = archives.simple_image("import-saved-bundle")
    name = f"{reg.host}/prot/saved-bundle:v1"
    bundle = ps.sign_bundle(bundle_img.digest, key, tlog=False)
    assert import_bytes(d, signed_layout(name, bundle_img, bundles=[bundle])) == name
    label = records(d)[name].labels[VERIFIED]
    assert label.startswith("verified via bundle referrer") and "in the archive" in label, label
    assert len(reg.requests()) == before, "the archive's signatures were enough: the registry was not asked"


def test_unlisted_bundle_referrers_verify_within_the_scan_bounds(reg, ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    """`cosign save` keeps cosign 3's bundles in blobs/ without listing them in index.json: Import
    finds them with the offline layout reader's scan, and its bounds. Past them the archive's
    referrers are not used, never trusted unread: the registry, which has none, is asked."""
    d = start(policy(reg, key))
    before = len(reg.requests())
    img = archives.simple_image("import-unlisted-bundle")
    name = f"{reg.host}/prot/unlisted:v1"
    bundle = ps.sign_bundle(img.digest, key, tlog=False)
    assert import_bytes(d, signed_layout(name, img, bundles=[bundle], listed=False)) == name
    label = records(d)[name].labels[VERIFIED]
    assert label.startswith("verified via bundle referrer") and "in the archive" in label, label
    assert len(reg.requests()) == before, "the archive's referrer was enough: the registry was not asked"

    crowded = archives.simple_image("import-unlisted-crowded")
    name = f"{reg.host}/prot/crowded:v1"
    bundle = ps.sign_bundle(crowded.digest, key, tlog=False)
    data = signed_layout(name, crowded, bundles=[bundle], listed=False, filler=MAX_SCANNED)
    e = refused(lambda: import_bytes(d, data))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    details = e.details() or ""
    assert "the archive's referrers were not used" in details, details
    assert f"more than {MAX_SCANNED} blobs of at most 65536 bytes" in details, details
    assert "nor in the registry" in details, details
    assert name not in records(d)
    no_leftovers(containerd)


def test_archive_signatures_must_sign_this_digest_with_the_rule_key(reg, ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start(policy(reg, key))
    img, other = archives.simple_image("import-badsig"), archives.simple_image("import-badsig-other")
    name = f"{reg.host}/prot/badsig:v1"
    cases = [
        signed_layout(
            name, img, legacy=[ps.sign_legacy(img.digest, name, ps.static_key("stranger"), tlog=False)]
        ),
        signed_layout(name, img, legacy=[ps.sign_legacy(other.digest, name, key, tlog=False)]),
        signed_layout(
            name, img, bundles=[ps.sign_bundle(other.digest, key, tlog=False)], bundle_subject=img.digest
        ),
    ]
    for data in cases:
        e = refused(lambda data=data: import_bytes(d, data))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
        assert "in the archive" in (e.details() or "") and "registry" in (e.details() or ""), e.details()
        assert name not in records(d)
        no_leftovers(containerd)


def test_signature_in_the_registry_verifies_an_archive(reg, ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    d = start(policy(reg, key))
    img = archives.simple_image("import-remote-signed")
    name = f"{reg.host}/prot/remote:v1"
    digest = archives.push(reg, "prot/remote", "v1", img)
    OciPusher(reg).push_legacy_signatures(
        "prot/remote", digest, [ps.sign_legacy(digest, f"{reg.host}/prot/remote", key, tlog=False)]
    )
    assert import_bytes(d, archives.oci_archive([(name, img)])) == name
    assert records(d)[name].labels[VERIFIED].startswith("verified via legacy signature")
    # Unmatched names are not verified, and no label says otherwise.
    free = "other.example/free/app:v1"
    assert import_bytes(d, archives.oci_archive([(free, archives.simple_image("import-free"))])) == free
    assert VERIFIED not in records(d)[free].labels
