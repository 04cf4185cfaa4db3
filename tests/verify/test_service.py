"""ImageVerifier end to end over an in-memory registry seeded with the vectors: verdicts, status
codes and messages, tag resolution, credentials, the verdict cache and single flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sigstore

from imaged.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from imaged.registry.reference import parse
from imaged.verify import ImageVerifier, Verdict, VerificationConfig
from tests.verify import seeds
from tests.verify.fake_registry import FakeRegistry
from tests.verify.vectors import PUBLIC_GOOD_ROOT, vdir

A2_RULE = {
    "image": "docker.io/phbelitz/*",
    "keyless": {"issuer": "https://github.com/login/oauth", "subject": "philipp.belitz@securesystems.de"},
}
GITHUB_RULE = {
    "keyless": {
        "issuer": "https://token.actions.githubusercontent.com",
        "subjectRegex": r"^https://github\.com/docker/github-builder-experimental/",
    }
}


def key(path: str) -> dict[str, Any]:
    return {"publicKey": {"certificate": (vdir(path.split("/")[0]) / path.split("/", 1)[1]).read_text()}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    rules: list[dict[str, Any]], reg: FakeRegistry, clock: Clock | None = None, **extra: Any
) -> ImageVerifier:
    config = VerificationConfig.model_validate({"rules": rules, **extra})
    return ImageVerifier(config, reg, clock=clock or Clock())


async def denied(v: ImageVerifier, image: str) -> str:
    with pytest.raises(PermissionDenied) as info:
        await v.verify(image)
    return info.value.message


# -- verdicts without signatures ------------------------------------------------------------------


async def test_no_matched_rule() -> None:
    reg = FakeRegistry()
    v = make([{"image": "ghcr.io/*", "skip": True}], reg)
    assert await v.verify("nginx:1.27") == Verdict(False, "no matched rule", "")
    pinned = "nginx@sha256:" + "a" * 64
    assert await v.verify(pinned) == Verdict(
        False, "no matched rule", "docker.io/library/nginx@sha256:" + "a" * 64
    )
    assert reg.calls == []  # no registry round trip for a verdict that does not need one


async def test_no_match_deny() -> None:
    v = make([], FakeRegistry(), noMatch="deny")
    assert await denied(v, "quay.io/app") == "no verification rule matches quay.io/app, and noMatch is deny"


async def test_skip_rule() -> None:
    v = make(
        [{"image": "ghcr.io/*", "deny": True}, {"image": "no-verify.io/*", "skip": True}], FakeRegistry()
    )
    assert await v.verify("no-verify.io/x/y:1") == Verdict(
        False, "verification skipped by matched rule 1 (no-verify.io/*)", ""
    )


async def test_deny_rule_first_match_wins() -> None:
    reg = FakeRegistry()
    v = make([{"image": "localhost:3000/*", "deny": True}, {"image": "*", "skip": True}], reg)
    assert await denied(v, "localhost:3000/app:v1") == (
        "verification denied by matched rule 0 (localhost:3000/*) for localhost:3000/app"
    )
    assert (await v.verify("localhost:3001/app:v1")).message == "verification skipped by matched rule 1 (*)"
    assert reg.calls == []


@pytest.mark.parametrize(
    "ref", ["INDEX.DOCKER.IO/library/nginx:1", "Registry-1.Docker.io:443/nginx:1", "GHCR.IO:443/org/app:v1"]
)
async def test_another_spelling_of_a_registry_does_not_escape_its_rule(ref: str) -> None:
    # These reach the registries the rules name; with noMatch: allow they once passed unverified.
    reg = FakeRegistry()
    v = make([{"image": "docker.io/*", "deny": True}, {"image": "ghcr.io/org/*", "deny": True}], reg)
    assert (await denied(v, ref)).startswith("verification denied by matched rule")
    assert reg.calls == []


@pytest.mark.parametrize("bad", ["", "docker.io/Upper/case", "a b", "nginx@sha256:123", "x:bad tag"])
async def test_invalid_reference(bad: str) -> None:
    v = make([{"image": "*", "skip": True}], FakeRegistry())
    with pytest.raises(InvalidArgument):
        await v.verify(bad)


def test_match() -> None:
    v = make(
        [{"image": "docker.io/*", "skip": True}, {"image": "ghcr.io/org/*", "deny": True}], FakeRegistry()
    )
    m = v.match("nginx")
    assert m is not None and m.index == 0 and m.action == "skip" and m.describe() == "rule 0 (docker.io/*)"
    m = v.match(parse("ghcr.io/org/app@sha256:" + "b" * 64))
    assert m is not None and m.index == 1 and m.action == "deny"
    assert v.match("quay.io/app") is None
    with pytest.raises(InvalidArgument):
        v.match("Not A Ref")


# -- verification through discovery ----------------------------------------------------------------


async def test_legacy_keyless_a2_by_tag() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    v = make([A2_RULE], reg)
    verdict = await v.verify("index.docker.io/phbelitz/rekor-test:latest")
    assert verdict.verified
    assert verdict.digested_ref == f"docker.io/phbelitz/rekor-test@{digest}"
    assert verdict.message == (
        "verified via legacy signature (signed by philipp.belitz@securesystems.de "
        "(issuer https://github.com/login/oauth), Rekor log index 98235800); rule 0 (docker.io/phbelitz/*); "
        f"trust root: embedded (sigstore-python {sigstore.__version__})"
    )
    assert reg.calls[0] == ("resolve", "latest")


async def test_digest_form_is_used_as_is() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    v = make([A2_RULE], reg)
    verdict = await v.verify(f"phbelitz/rekor-test:ignored@{digest}")
    assert verdict.verified and verdict.digested_ref == f"docker.io/phbelitz/rekor-test@{digest}"
    assert not any(c[0] == "resolve" for c in reg.calls)


async def test_legacy_keyless_wrong_identity_is_denied_with_reasons() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    rule = {
        "image": "docker.io/phbelitz/*",
        "keyless": {"issuer": "https://github.com/login/oauth", "subject": "someone@else.example"},
    }
    msg = await denied(make([rule], reg), "phbelitz/rekor-test")
    assert msg == (
        f"image verification failed: docker.io/phbelitz/rekor-test@{digest}: no signature satisfies rule 0 "
        "(docker.io/phbelitz/*), which expects a keyless signature by subject 'someone@else.example' "
        f"from issuer 'https://github.com/login/oauth': legacy signature {seeds.sig_tag(digest)} layer 0: "
        "certificate subject mismatch: expected 'someone@else.example', "
        "found ['philipp.belitz@securesystems.de']"
    )


@pytest.mark.parametrize(("vid", "api"), [("B1", True), ("B2", False), ("B3", True), ("B3", False)])
async def test_keyless_bundle_referrer(vid: str, api: bool) -> None:
    reg = FakeRegistry(referrers_api=api)
    repo, digest, referrer = seeds.bundle_vector(reg, vid)
    v = make([{"image": "*", **GITHUB_RULE}], reg)
    verdict = await v.verify(f"{repo}:latest")
    assert verdict.verified and verdict.digested_ref == f"{repo}@{digest}"
    assert verdict.message.startswith(
        f"verified via bundle referrer with digest {referrer} (signed by https://github.com/"
    )
    # the bundle verified: the legacy tag was never fetched (a counted pull on Docker Hub)
    assert ("get_manifest", seeds.sig_tag(digest)) not in reg.calls


async def test_b4_key_bundle_and_wrong_key() -> None:
    reg = FakeRegistry(referrers_api=False)
    repo, digest, referrer = seeds.bundle_vector(reg, "B4")
    v = make([{"image": "ttl.sh/*", **key("B4/cosign.pub")}], reg)
    verdict = await v.verify(f"{repo}:latest")
    assert verdict.message.startswith(f"verified via bundle referrer with digest {referrer} (signed by ECDSA")
    msg = await denied(make([{"image": "ttl.sh/*", **key("B4/wrong.pub")}], reg), f"{repo}:latest")
    assert msg.startswith(
        f"image verification failed: {repo}@{digest}: no signature satisfies rule 0 (ttl.sh/*)"
    )
    assert f"bundle referrer {referrer}: DSSE signature does not verify" in msg


@pytest.mark.parametrize("form", ["legacy", "oci11"])
async def test_c5_both_forms(form: str) -> None:
    reg = FakeRegistry(referrers_api=False)
    repo, _ = seeds.c5(reg, form)
    v = make([{"image": "ttl.sh/*", **key("C5/cosign.pub")}], reg)
    verdict = await v.verify(f"{repo}:latest")
    expected = (
        "verified via legacy signature (" if form == "legacy" else "verified via legacy signature referrer"
    )
    assert verdict.verified and verdict.message.startswith(expected)
    await denied(make([{"image": "ttl.sh/*", **key("C5/wrong.pub")}], reg), f"{repo}:latest")


async def test_c3_any_valid_layer_suffices() -> None:
    reg = FakeRegistry()
    _, digest = seeds.c3(reg, "multi-alice-bob-charlie")
    v = make([{"image": "securesystemsengineering/*", **key("C3/keys/charlie.pub")}], reg)
    verdict = await v.verify(f"securesystemsengineering/testimage@{digest}")
    assert verdict.verified and verdict.message.startswith("verified via legacy signature (signed by ECDSA")
    msg = await denied(
        make([{"image": "securesystemsengineering/*", **key("C3/keys/default.pub")}], reg),
        f"securesystemsengineering/testimage@{digest}",
    )
    assert msg.count("signature does not verify with the rule's") == 3  # all three layers, each named
    for i in range(3):
        assert f"layer {i}: signature does not verify" in msg


async def test_no_signatures_at_all() -> None:
    reg = FakeRegistry(referrers_api=False)
    repo, digest = "r.io/unsigned", ""
    digest = reg.put_manifest(repo, b'{"schemaVersion":2}', tag="v1")
    msg = await denied(make([{"image": "r.io/*", **key("C5/cosign.pub")}], reg), "r.io/unsigned:v1")
    assert msg == (
        f"image verification failed: r.io/unsigned@{digest}: no signatures found; rule 0 (r.io/*) expects a "
        f"signature by ECDSA secp256r1 key sha256:{msg.split('key sha256:')[1].split('…')[0]}… "
        f"(no referrers API and no referrers tag {seeds.referrers_tag(digest)}; "
        f"no legacy signature tag {seeds.sig_tag(digest)})"
    )


async def test_bundle_failure_falls_back_to_legacy_stage() -> None:
    """A2's genuine legacy signature plus an unrelated referrer: the referrer fails, legacy verifies."""
    reg = FakeRegistry()
    repo, digest = seeds.a2(reg)
    b1 = vdir("B1")
    doc = (
        (next(b1.glob("referrer-manifest.*.json")))
        .read_text()
        .replace("sha256:8fe63f8b055569015407e5bd0c78071e87cf921019249b8b7a913091f680a664", digest)
    )
    reg.put_manifest(repo, doc.encode())
    reg.put_blob((b1 / "bundle.sigstore.json").read_bytes())
    verdict = await make([A2_RULE], reg).verify(f"phbelitz/rekor-test@{digest}")
    assert verdict.message.startswith("verified via legacy signature (signed by philipp.belitz")


# -- registry trouble is an error, never a verdict ---------------------------------------------------


async def test_unknown_tag_is_not_found() -> None:
    v = make([A2_RULE], FakeRegistry())
    with pytest.raises(NotFound):
        await v.verify("phbelitz/rekor-test:nope")


@pytest.mark.parametrize("method", ["resolve", "referrers", "get_manifest", "get_blob"])
async def test_registry_unavailable_is_an_error(method: str) -> None:
    reg = FakeRegistry()
    seeds.a2(reg)
    reg.errors[method] = Unavailable("registry-1.docker.io failed with HTTP 503")
    with pytest.raises(Unavailable):
        await make([A2_RULE], reg).verify("phbelitz/rekor-test:latest")


async def test_errors_are_not_cached() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    v = make([A2_RULE], reg)
    reg.errors["get_manifest"] = Unavailable("down")
    with pytest.raises(Unavailable):
        await v.verify(f"phbelitz/rekor-test@{digest}")
    del reg.errors["get_manifest"]
    assert (await v.verify(f"phbelitz/rekor-test@{digest}")).verified


# -- credentials ------------------------------------------------------------------------------------


async def test_request_credentials_reach_the_registry() -> None:
    reg = FakeRegistry()
    seeds.a2(reg)
    v = make([A2_RULE], reg)
    await v.verify("phbelitz/rekor-test", ("docker.io", "user", "secret"))
    assert reg.credentials == [("docker.io", "user", "secret")]
    await make([A2_RULE], reg).verify("phbelitz/rekor-test", None)
    assert len(reg.credentials) == 1


# -- cache and single flight ------------------------------------------------------------------------


async def test_success_is_cached_until_its_ttl() -> None:
    reg, clock = FakeRegistry(), Clock()
    _, digest = seeds.a2(reg)
    v = make([A2_RULE], reg, clock, cache={"successTtl": 60, "failureTtl": 5})
    ref = f"phbelitz/rekor-test@{digest}"
    first = await v.verify(ref)
    n = len(reg.calls)
    clock.now += 59
    assert await v.verify(ref) == first and len(reg.calls) == n
    clock.now += 2
    assert await v.verify(ref) == first and len(reg.calls) > n


async def test_cache_hits_are_reported_once_each_for_success_and_failure() -> None:
    """The daemon's cache-hit metric: called for a verdict served from cache, never for a computed one."""
    reg, clock, hits = FakeRegistry(), Clock(), []
    _, digest = seeds.a2(reg)
    wrong = {"image": "docker.io/phbelitz/other", "keyless": {"issuer": "x", "subject": "y"}}
    config = VerificationConfig.model_validate({"rules": [wrong, A2_RULE]})
    v = ImageVerifier(config, reg, clock=clock, on_cache_hit=lambda: hits.append(1))
    ref = f"phbelitz/rekor-test@{digest}"
    first = await v.verify(ref)
    assert hits == []
    assert await v.verify(ref) == first
    assert hits == [1]
    await denied(v, f"phbelitz/other@{digest}")
    await denied(v, f"phbelitz/other@{digest}")
    assert hits == [1, 1]


async def test_tags_are_resolved_every_time_even_when_cached() -> None:
    reg = FakeRegistry()
    seeds.a2(reg)
    v = make([A2_RULE], reg)
    await v.verify("phbelitz/rekor-test:latest")
    await v.verify("phbelitz/rekor-test:latest")
    assert [c for c in reg.calls if c[0] == "resolve"] == [("resolve", "latest")] * 2
    assert sum(1 for c in reg.calls if c[0] == "referrers") == 1


async def test_failure_is_cached_with_its_own_ttl() -> None:
    reg, clock = FakeRegistry(), Clock()
    _, digest = seeds.a2(reg)
    wrong = {"image": "docker.io/phbelitz/*", "keyless": {"issuer": "x", "subject": "y"}}
    v = make([wrong], reg, clock, cache={"successTtl": 600, "failureTtl": 5})
    ref = f"phbelitz/rekor-test@{digest}"
    m1 = await denied(v, ref)
    n = len(reg.calls)
    assert await denied(v, ref) == m1 and len(reg.calls) == n
    clock.now += 6
    await denied(v, ref)
    assert len(reg.calls) > n


async def test_cache_is_keyed_by_rule_content_and_cleared_on_reload() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    v = make([A2_RULE], reg)
    ref = f"phbelitz/rekor-test@{digest}"
    assert (await v.verify(ref)).verified
    n = len(reg.calls)
    v.reload(VerificationConfig.model_validate({"rules": [A2_RULE]}))
    assert (await v.verify(ref)).verified and len(reg.calls) > n  # cleared
    wrong = {"image": "docker.io/phbelitz/*", "keyless": {"issuer": "x", "subject": "y"}}
    v.reload(VerificationConfig.model_validate({"rules": [wrong]}))
    await denied(v, ref)  # a changed rule never reuses the old verdict


async def test_cache_size_is_bounded() -> None:
    reg = FakeRegistry()
    v = make([{"image": "*", **key("C5/cosign.pub")}], reg, cache={"maxEntries": 2})
    for i in range(4):
        with pytest.raises(PermissionDenied):
            await v.verify(f"r.io/app@sha256:{i:064x}")
    assert len(v._cache) == 2


async def test_concurrent_identical_requests_share_one_verification() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    reg.delay = 0.05
    v = make([A2_RULE], reg)
    verdicts = await asyncio.gather(*(v.verify(f"phbelitz/rekor-test@{digest}") for _ in range(8)))
    assert all(x == verdicts[0] and x.verified for x in verdicts)
    assert sum(1 for c in reg.calls if c[0] == "referrers") == 1
    assert sum(1 for c in reg.calls if c[0] == "get_blob") == 1


class _Picky(FakeRegistry):
    """Refuses a wrong password (as a registry would: UNAUTHENTICATED), serves the right one."""

    def with_credentials(self, host: str, username: str, password: str) -> FakeRegistry:
        if password != "wrong":
            return super().with_credentials(host, username, password)
        refusing = FakeRegistry()
        refusing.delay = self.delay
        refusing.errors = {
            m: Unauthenticated("wrong password") for m in ("resolve", "referrers", "list_tags")
        }
        return refusing


async def test_callers_with_other_credentials_do_not_share_a_verification() -> None:
    reg = _Picky()
    _, digest = seeds.a2(reg)
    reg.delay = 0.05
    v = make([A2_RULE], reg)
    ref = f"phbelitz/rekor-test@{digest}"
    wrong, right = ("docker.io", "u", "wrong"), ("docker.io", "u", "right")
    results = await asyncio.gather(v.verify(ref, wrong), v.verify(ref, right), return_exceptions=True)
    assert isinstance(results[0], Unauthenticated)
    assert isinstance(results[1], Verdict) and results[1].verified
    assert await v.verify(ref, right) == results[1]  # and the right one's verdict is cached for it


async def test_a_cancelled_caller_does_not_cancel_the_shared_verification() -> None:
    reg = FakeRegistry()
    _, digest = seeds.a2(reg)
    reg.delay = 0.05
    v = make([A2_RULE], reg)
    first = asyncio.ensure_future(v.verify(f"phbelitz/rekor-test@{digest}"))
    second = asyncio.ensure_future(v.verify(f"phbelitz/rekor-test@{digest}"))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).verified
    assert first.cancelled()


def test_config_warnings_are_available() -> None:
    v = make([{"image": "*", "skip": True}, {"image": "ghcr.io/*", "deny": True}], FakeRegistry())
    assert v.warnings() == [
        "rules[1] ('ghcr.io/*') is never used: rules[0] ('*') matches every image it matches, "
        "and the first matching rule wins"
    ]


def test_private_trusted_root_is_loaded(tmp_path: Any) -> None:
    v = make([A2_RULE], FakeRegistry(), trustedRoot=str(PUBLIC_GOOD_ROOT))
    assert v.trust_root is not None and v.trust_root.source == str(PUBLIC_GOOD_ROOT)
    assert make([{"image": "*", "skip": True}], FakeRegistry()).trust_root is None  # not needed, not loaded
