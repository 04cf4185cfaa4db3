"""End to end: ImageVerifier with the real RegistryClient against a real docker-registry 2.8 (no
referrers API, so cosign 3 referrers are found through the `sha256-<hex>` tag) holding signatures
made by the private Sigstore, anchored in its trusted_root.json."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from imaged.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable
from imaged.registry.client import RegistryClient
from imaged.registry.config import RegistriesConfig
from imaged.verify import ImageVerifier, VerificationConfig
from imaged.verify.service import RegistryClientLike
from tests.support.registry import Registry
from tests.support.sigstore import OciPusher, PrivateSigstore

EMAIL, ISSUER = "release@example.com", "https://accounts.example.com"
USER, PASSWORD = "alice", "correct horse battery staple"


def registries_config() -> RegistriesConfig:
    return RegistriesConfig.model_validate(
        {
            "retries": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.02},
            "timeouts": {"connect": 2, "read": 5},
        }
    )


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def ps() -> PrivateSigstore:
    return PrivateSigstore()


@pytest.fixture(scope="module")
def trusted_root(ps: PrivateSigstore, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return ps.write_trusted_root(tmp_path_factory.mktemp("trust") / "trusted_root.json")


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(registries_config()) as c:
        yield c


def config(
    registry: Registry, trusted_root: pathlib.Path, rule: dict[str, Any], **extra: Any
) -> VerificationConfig:
    return VerificationConfig.model_validate(
        {"rules": [{"image": f"{registry.host}/*", **rule}], "trustedRoot": str(trusted_root), **extra}
    )


KEYLESS = {"keyless": {"issuer": ISSUER, "subject": EMAIL}}


def test_registry_client_satisfies_the_protocol(client: RegistryClient) -> None:
    typed: RegistryClientLike = client  # checked by mypy; at run time the methods exist
    for name in ("resolve", "get_manifest", "get_blob", "referrers", "with_credentials"):
        assert callable(getattr(typed, name))


async def test_legacy_keyless(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("e2e/legacy", "v1", label="legacy")
    sig = ps.sign_legacy(image.digest, f"{registry.host}/e2e/legacy", ps.issue_leaf(EMAIL, ISSUER))
    push.push_legacy_signatures("e2e/legacy", image.digest, [sig])
    v = ImageVerifier(config(registry, trusted_root, KEYLESS), client)
    verdict = await v.verify(f"{registry.host}/e2e/legacy:v1")
    assert verdict.verified
    assert verdict.digested_ref == f"{registry.host}/e2e/legacy@{image.digest}"
    assert verdict.message.startswith(f"verified via legacy signature (signed by {EMAIL} (issuer {ISSUER})")


async def test_keyless_bundle_via_referrers_tag(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("e2e/bundle", "v1", label="bundle")
    referrer = push.push_bundle_referrer(
        "e2e/bundle", image, ps.sign_bundle(image.digest, ps.issue_leaf(EMAIL, ISSUER))
    )
    v = ImageVerifier(config(registry, trusted_root, KEYLESS), client)
    before = len(registry.requests())
    verdict = await v.verify(f"{registry.host}/e2e/bundle:v1")
    assert verdict.verified
    assert verdict.message.startswith(
        f"verified via bundle referrer with digest {referrer.digest} (signed by {EMAIL}"
    )
    seen = [p for _, p, _ in registry.requests()[before:]]
    assert any(p.endswith(f"/referrers/{image.digest}") for p in seen)  # asked; 404 on distribution 2.8
    assert any(p.endswith("/manifests/" + image.digest.replace(":", "-")) for p in seen)
    assert not any(p.endswith(".sig") for p in seen)  # verified by the bundle: no legacy GET
    # cached: a second request costs only the tag's HEAD
    before = len(registry.requests())
    assert (await v.verify(f"{registry.host}/e2e/bundle:v1")) == verdict
    assert [(m, p) for m, p, _ in registry.requests()[before:]] == [("HEAD", "/v2/e2e/bundle/manifests/v1")]


@pytest.mark.parametrize("form", ["legacy", "bundle"])
async def test_static_key(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient, form: str
) -> None:
    push = OciPusher(registry)
    repo = f"e2e/key-{form}"
    image = push.push_minimal_image(repo, "v1", label=form)
    key = ps.static_key(f"e2e-{form}")
    if form == "legacy":
        push.push_legacy_signatures(repo, image.digest, [ps.sign_legacy(image.digest, repo, key, tlog=False)])
    else:
        push.push_bundle_referrer(repo, image, ps.sign_bundle(image.digest, key, tlog=False))
    good = {"publicKey": {"certificate": key.public_pem.decode()}}
    verdict = await ImageVerifier(config(registry, trusted_root, good), client).verify(
        f"{registry.host}/{repo}:v1"
    )
    assert verdict.verified and verdict.digested_ref.endswith(image.digest)
    other = {"publicKey": {"certificate": ps.static_key("someone-else").public_pem.decode()}}
    with pytest.raises(PermissionDenied) as info:
        await ImageVerifier(config(registry, trusted_root, other), client).verify(
            f"{registry.host}/{repo}:v1"
        )
    assert "does not verify with the rule's ECDSA secp256r1 key" in info.value.message


async def test_unsigned_image_is_denied(
    registry: Registry, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    image = OciPusher(registry).push_minimal_image("e2e/unsigned", "v1", label="unsigned")
    v = ImageVerifier(config(registry, trusted_root, KEYLESS), client)
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/e2e/unsigned:v1")
    assert info.value.message.startswith(
        f"image verification failed: {registry.host}/e2e/unsigned@{image.digest}: no signatures found"
    )


async def test_wrong_identity_is_denied(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    image = push.push_minimal_image("e2e/mallory", "v1", label="mallory")
    leaf = ps.issue_leaf("mallory@example.com", ISSUER)
    push.push_legacy_signatures(
        "e2e/mallory", image.digest, [ps.sign_legacy(image.digest, "e2e/mallory", leaf)]
    )
    push.push_bundle_referrer("e2e/mallory", image, ps.sign_bundle(image.digest, leaf))
    v = ImageVerifier(config(registry, trusted_root, KEYLESS), client)
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/e2e/mallory:v1")
    msg = info.value.message
    assert msg.count(f"certificate subject mismatch: expected '{EMAIL}', found ['mallory@example.com']") == 2


async def test_referrer_planted_for_another_image_is_ignored(
    registry: Registry, ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    push = OciPusher(registry)
    signed = push.push_minimal_image("e2e/plant", "signed", label="signed")
    target = push.push_minimal_image("e2e/plant", "target", label="target")
    bundle = ps.sign_bundle(signed.digest, ps.issue_leaf(EMAIL, ISSUER))
    referrer = push.push_bundle_referrer("e2e/plant", signed, bundle, index_for=target.digest)
    v = ImageVerifier(config(registry, trusted_root, KEYLESS), client)
    with pytest.raises(PermissionDenied) as info:
        await v.verify(f"{registry.host}/e2e/plant:target")
    assert (
        f"referrer {referrer.digest} refers to {signed.digest}, not to the image {target.digest}"
        in info.value.message
    )


async def test_unknown_tag_is_not_found(
    registry: Registry, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    with pytest.raises(NotFound):
        await ImageVerifier(config(registry, trusted_root, KEYLESS), client).verify(
            f"{registry.host}/e2e/none:v9"
        )


async def test_registry_down_is_unavailable(
    ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    with Registry() as reg:
        image = OciPusher(reg).push_minimal_image("e2e/down", "v1")
        reg.stop()
        v = ImageVerifier(config(reg, trusted_root, KEYLESS), client)
        with pytest.raises(Unavailable):
            await v.verify(f"{reg.host}/e2e/down@{image.digest}")


async def test_request_credentials(
    ps: PrivateSigstore, trusted_root: pathlib.Path, client: RegistryClient
) -> None:
    with Registry(htpasswd={USER: PASSWORD}) as reg:
        push = OciPusher(reg)
        image = push.push_minimal_image("e2e/private", "v1")
        push.push_legacy_signatures(
            "e2e/private",
            image.digest,
            [ps.sign_legacy(image.digest, "e2e/private", ps.issue_leaf(EMAIL, ISSUER))],
        )
        v = ImageVerifier(config(reg, trusted_root, KEYLESS), client)
        with pytest.raises(Unauthenticated):
            await v.verify(f"{reg.host}/e2e/private:v1")
        verdict = await v.verify(f"{reg.host}/e2e/private:v1", (reg.host, USER, PASSWORD))
        assert verdict.verified and verdict.message.startswith("verified via legacy signature")
