"""Issue 19.10: an opt-in rule setting binds a signature to the repository, not just the digest.

The attack: cosign signatures name a digest, so a signature made for `team-a/app` verifies the
same bytes copied to `team-b/app` (or to any repository a rule covers): whoever can push there
can present team-a's signed image, under team-a's signature, as team-b's. With
`checkDockerReference: true` a legacy simple-signing payload must name the repository being
verified in `critical.identity.docker-reference`; a bundle's in-toto statement names no
repository, so under that setting it cannot satisfy the rule."""

from __future__ import annotations

import grpc

from imaged.pb.machine import image_pb2
from tests.policy.conftest import key_rule, refused
from tests.support import archives
from tests.support.sigstore import OciPusher


def verify(d, ref):  # type: ignore[no-untyped-def]
    return d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref), timeout=60)


def test_signature_for_one_repository_does_not_verify_another(reg, ps, key, start) -> None:  # type: ignore[no-untyped-def]
    img = archives.simple_image("signed-reference")
    push = OciPusher(reg)
    sig = ps.sign_legacy(img.digest, f"{reg.host}/refbind/team-a", key, tlog=False)
    for repo in ("refbind/team-a", "refbind/team-b"):  # team-b copied image and signature
        archives.push(reg, repo, "v1", img)
        push.push_legacy_signatures(repo, img.digest, [sig])
    bundled = archives.simple_image("signed-reference-bundle")
    archives.push(reg, "refbind/bundled", "v1", bundled)
    push.push_bundle_referrer(
        "refbind/bundled",
        push.descriptor("refbind/bundled", "v1"),
        ps.sign_bundle(bundled.digest, key, tlog=False),
    )

    # As in cosign: the digest is what is signed, so the copy verifies.
    d = start({"rules": [key_rule(f"{reg.host}/refbind/*", key)]})
    assert verify(d, f"{reg.host}/refbind/team-b:v1").verified
    assert verify(d, f"{reg.host}/refbind/bundled:v1").verified
    d.stop()

    d = start({"rules": [key_rule(f"{reg.host}/refbind/*", key, checkDockerReference=True)]})
    assert verify(d, f"{reg.host}/refbind/team-a:v1").verified
    # Another spelling of the same registry is the same repository.
    assert verify(d, f"127.0.0.1:0{reg.port}/refbind/team-a:v1").verified
    e = refused(lambda: verify(d, f"{reg.host}/refbind/team-b:v1"))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    assert f"signed for {reg.host}/refbind/team-a, not for {reg.host}/refbind/team-b" in (e.details() or "")
    e = refused(lambda: verify(d, f"{reg.host}/refbind/bundled:v1"))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    assert "names no repository" in (e.details() or ""), e.details()


def test_check_docker_reference_is_for_signature_rules(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from imaged.config import ConfigError, load_text

    try:
        load_text(
            "verification:\n  rules:\n    - image: a.io/*\n"
            "      skip: true\n      checkDockerReference: true\n"
        )
    except ConfigError as e:
        assert "checkDockerReference" in str(e)
    else:
        raise AssertionError("a skip rule took checkDockerReference")
