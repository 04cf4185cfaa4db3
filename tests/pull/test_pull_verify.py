"""Verify on pull: the policy runs before anything is fetched; a verified pull is pinned."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from imaged.pb.common import common_pb2
from imaged.pb.machine import image_pb2
from tests.policy.layouts import signed_layout
from tests.pull.test_pull import leases, pull, run
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess, run_imaged
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

# Each test using containerd/daemon runs against containerd 1.6 and 2.x (tests/conftest.py).
CONTAINERD_MATRIX = True


@pytest.fixture(scope="module")
def env(containerd: PrivateContainerd) -> Iterator[tuple[Registry, DaemonProcess, PrivateSigstore, object]]:
    reg = Registry()
    ps = PrivateSigstore(seed=b"pull-verify")
    key = ps.static_key()
    rules = [
        {"image": f"{reg.host}/signed/*", "publicKey": {"certificate": key.public_pem.decode()}},
        {"image": f"{reg.host}/denied/*", "deny": True},
    ]
    d = DaemonProcess(containerd.socket, {"verification": {"rules": rules}})
    d.start()
    yield reg, d, ps, key
    d.stop()
    reg.close()


def sign(reg: Registry, ps: PrivateSigstore, key: object, repo: str, digest: str) -> None:
    sig = ps.sign_legacy(digest, f"{reg.host}/{repo}", key, tlog=False)  # type: ignore[arg-type]
    OciPusher(reg).push_legacy_signatures(repo, digest, [sig])


def image_names(cd: PrivateContainerd) -> str:
    return cd.ctr("images", "ls", namespace="system").stdout


def test_verified_pull_is_pinned_and_labelled(env, containerd) -> None:  # type: ignore[no-untyped-def]
    reg, d, ps, key = env
    img = archives.simple_image("verified-pull")
    digest = archives.push(reg, "signed/app", "v1", img)
    sign(reg, ps, key, "signed/app", digest)
    name, _ = pull(d, f"{reg.host}/signed/app:v1", SYSTEM)
    assert name == f"{reg.host}/signed/app@{digest}"
    listed = {r.name: r for r in d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    rec = listed[f"{reg.host}/signed/app:v1"]
    assert rec.digest == digest
    assert rec.labels["imaged.dev/verified"].startswith("verified via legacy signature")
    assert "verified-pull" in run(containerd, "system", f"{reg.host}/signed/app:v1")


def test_a_record_repointed_without_verification_loses_the_label(env, containerd) -> None:  # type: ignore[no-untyped-def]
    reg, d, ps, key = env
    name = f"{reg.host}/signed/relabel:v1"
    digest = archives.push(reg, "signed/relabel", "v1", archives.simple_image("relabel-verified"))
    sign(reg, ps, key, "signed/relabel", digest)
    pull(d, name, SYSTEM)

    def import_archive(data: bytes) -> str:
        chunks = [image_pb2.ImageServiceImportRequest(containerd=SYSTEM)] + [
            image_pb2.ImageServiceImportRequest(image_chunk=common_pb2.Data(bytes=data[i : i + 65536]))
            for i in range(0, len(data), 65536)
        ]
        return d.images.Import(iter(chunks), timeout=120).name

    # The same name imported from an archive: nothing verified that image, so (issue 19.4) the
    # import is refused and the record keeps its verified image.
    data = archives.docker_archive([([name], archives.simple_image("relabel-imported"))])
    with pytest.raises(grpc.RpcError) as e:
        import_archive(data)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
    listed = {r.name: r for r in d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    assert listed[name].digest == digest
    # Repointed by an archive that carries a signature of its own image: the record gets that
    # verdict, never the earlier image's.
    other = archives.simple_image("relabel-imported-signed")
    sig = ps.sign_legacy(other.digest, f"{reg.host}/signed/relabel", key, tlog=False)
    assert import_archive(signed_layout(name, other, legacy=[sig])) == name
    listed = {r.name: r for r in d.images.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM))}
    assert listed[name].digest == other.digest
    assert "in the archive" in listed[name].labels["imaged.dev/verified"], "an earlier image's verdict stayed"


def test_unsigned_or_denied_pull_fetches_nothing(env, containerd) -> None:  # type: ignore[no-untyped-def]
    reg, d, _ps, _key = env
    unsigned = archives.simple_image("unsigned-pull")
    archives.push(reg, "signed/unsigned", "v1", unsigned)
    archives.push(reg, "denied/app", "v1", archives.simple_image("denied-pull"))
    before = len([r for r in reg.requests() if "/blobs/" in r[1]])
    for ref, fragment in (
        (f"{reg.host}/signed/unsigned:v1", "image verification failed"),
        (f"{reg.host}/denied/app:v1", "denied by matched rule"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            pull(d, ref, SYSTEM)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert fragment in e.value.details()
        assert ref not in image_names(containerd)
    layer_gets = [r for r in reg.requests() if "/blobs/" in r[1] and r[0] == "GET"][before:]
    assert not [r for r in layer_gets if unsigned.layers[-1].digest in r[1]], "a refused image was downloaded"
    assert leases(containerd, "system") == []


def test_moved_tag_does_not_change_a_verified_pull(env, containerd) -> None:  # type: ignore[no-untyped-def]
    """Verification pins the digest: what is fetched is what was verified, even if the tag moves."""
    reg, d, ps, key = env
    first = archives.simple_image("tag-first")
    digest = archives.push(reg, "signed/moving", "v1", first)
    sign(reg, ps, key, "signed/moving", digest)
    resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"{reg.host}/signed/moving:v1"))
    assert resp.verified and resp.digested_image_ref == f"{reg.host}/signed/moving@{digest}"
    # The tag moves to an unsigned image after verification: pulling the pinned ref gets the verified one.
    archives.push(reg, "signed/moving", "v1", archives.simple_image("tag-second"))
    name, _ = pull(d, resp.digested_image_ref, SYSTEM)
    assert name == f"{reg.host}/signed/moving@{digest}"
    assert "tag-first" in run(containerd, "system", resp.digested_image_ref)
    # And the tag form now points at an unsigned image, which is refused.
    with pytest.raises(grpc.RpcError) as e:
        pull(d, f"{reg.host}/signed/moving:v1", SYSTEM)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_pkcs1_rsa_key_rule(containerd: PrivateContainerd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A key pasted as `BEGIN RSA PUBLIC KEY` (PKCS#1, as openssl rsa -RSAPublicKey_out writes it)."""
    from cryptography.hazmat.primitives import serialization

    from tests.support.sigstore import StaticKey

    key = StaticKey.rsa()
    pkcs1 = key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    reg = Registry()
    d = DaemonProcess(
        containerd.socket,
        {
            "verification": {
                "rules": [{"image": f"{reg.host}/rsa/*", "publicKey": {"certificate": pkcs1.decode()}}]
            }
        },
    )
    d.start()
    try:
        ps = PrivateSigstore(seed=b"pkcs1")
        img = archives.simple_image("pkcs1")
        digest = archives.push(reg, "rsa/app", "v1", img)
        sign(reg, ps, key, "rsa/app", digest)
        name, _ = pull(d, f"{reg.host}/rsa/app:v1", SYSTEM)
        assert name == f"{reg.host}/rsa/app@{digest}"
        verdict = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=f"{reg.host}/rsa/app:v1"))
        assert verdict.verified and "RSA-2048 key" in verdict.message
    finally:
        d.stop()
        reg.close()


def test_a_weak_rsa_key_is_refused_at_load_with_its_size(tmp_path) -> None:  # type: ignore[no-untyped-def]

    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    for fmt in (serialization.PublicFormat.PKCS1, serialization.PublicFormat.SubjectPublicKeyInfo):
        pem = weak.public_bytes(serialization.Encoding.PEM, fmt).decode()
        path = tmp_path / "config.yaml"
        rule = {"image": "ghcr.io/org/*", "publicKey": {"certificate": pem}}
        path.write_text(yaml.safe_dump({"verification": {"rules": [rule]}}))
        r = run_imaged("--check-config", str(path))
        assert r.returncode != 0
        assert "rules.0" in r.stderr or "rules[0]" in r.stderr, r.stderr
        assert "RSA key of 1024 bits is too small (at least 2048)" in r.stderr, r.stderr
