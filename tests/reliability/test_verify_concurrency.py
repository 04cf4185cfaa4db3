"""Verify under concurrency never says verified=true for a negative case.

50 concurrent Verify calls mix a properly signed image (static key, and keyless from the private
Sigstore with `trustedRoot`) with tampered, unsigned, wrongly keyed and foreign-Sigstore ones, by
tag and by digest, with the verdict cache on (cold, then warm) and off. Every answer must be the
one expected for its image: exactly, never a verdict borrowed from another call.
"""

from __future__ import annotations

import base64
import pathlib
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from imaged.pb.machine import image_pb2
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry
from tests.support.sigstore import ANN_SIGNATURE, LegacySignature, OciPusher, PrivateSigstore

EMAIL, ISSUER = "release@example.com", "https://accounts.example.com"


@dataclass(frozen=True)
class Case:
    ref: str
    digest: str
    verified: bool  # else PERMISSION_DENIED


@pytest.fixture(scope="module")
def world(rel_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], dict]:  # type: ignore[type-arg]
    ps = PrivateSigstore()
    root = ps.write_trusted_root(tmp_path_factory.mktemp("trust") / "trusted_root.json")
    push = OciPusher(rel_registry)
    host = rel_registry.host
    key = ps.static_key("concurrency")
    other_key = ps.static_key("not-the-rule's")
    foreign = PrivateSigstore(seed=b"another sigstore")
    cases: list[Case] = []

    def image(repo: str) -> str:
        return push.push_minimal_image(repo, "v1", label=repo).digest

    def add(repo: str, digest: str, verified: bool) -> None:
        cases.append(Case(f"{host}/{repo}:v1", digest, verified))
        cases.append(Case(f"{host}/{repo}@{digest}", digest, verified))

    # Static key rule.
    d = image("vc/key/good")
    push.push_legacy_signatures("vc/key/good", d, [ps.sign_legacy(d, f"{host}/vc/key/good", key, tlog=False)])
    add("vc/key/good", d, True)
    d = image("vc/key/unsigned")
    add("vc/key/unsigned", d, False)
    d = image("vc/key/wrongkey")
    push.push_legacy_signatures(
        "vc/key/wrongkey", d, [ps.sign_legacy(d, f"{host}/vc/key/wrongkey", other_key, tlog=False)]
    )
    add("vc/key/wrongkey", d, False)
    # A genuine signature of the good image, planted on another image: the payload names the wrong digest.
    good = cases[0].digest
    d = image("vc/key/replayed")
    push.push_legacy_signatures(
        "vc/key/replayed", d, [ps.sign_legacy(good, f"{host}/vc/key/good", key, tlog=False)]
    )
    add("vc/key/replayed", d, False)
    # Signature bytes flipped.
    d = image("vc/key/tampered")
    sig = ps.sign_legacy(d, f"{host}/vc/key/tampered", key, tlog=False)
    raw = bytearray(sig.signature)
    raw[len(raw) // 2] ^= 0x01
    tampered = LegacySignature(
        payload=sig.payload,
        signature=bytes(raw),
        annotations={**sig.annotations, ANN_SIGNATURE: base64.b64encode(bytes(raw)).decode()},
        tlog_entry=None,
    )
    push.push_legacy_signatures("vc/key/tampered", d, [tampered])
    add("vc/key/tampered", d, False)

    # Keyless rule (private Sigstore, bundles through the referrers tag and legacy signatures).
    d = image("vc/kl/good")
    push.push_bundle_referrer(
        "vc/kl/good", push.descriptor("vc/kl/good", "v1"), ps.sign_bundle(d, ps.issue_leaf(EMAIL, ISSUER))
    )
    add("vc/kl/good", d, True)
    d = image("vc/kl/otherid")
    push.push_legacy_signatures(
        "vc/kl/otherid",
        d,
        [ps.sign_legacy(d, f"{host}/vc/kl/otherid", ps.issue_leaf("mallory@example.com", ISSUER))],
    )
    add("vc/kl/otherid", d, False)
    d = image("vc/kl/foreign")
    push.push_bundle_referrer(
        "vc/kl/foreign",
        push.descriptor("vc/kl/foreign", "v1"),
        foreign.sign_bundle(d, foreign.issue_leaf(EMAIL, ISSUER)),
    )
    add("vc/kl/foreign", d, False)
    d = image("vc/kl/unsigned")
    add("vc/kl/unsigned", d, False)

    verification = {
        "rules": [
            {"image": f"{host}/vc/key/*", "publicKey": {"certificate": key.public_pem.decode()}},
            {"image": f"{host}/vc/kl/*", "keyless": {"issuer": ISSUER, "subject": EMAIL}},
        ],
        "trustedRoot": str(pathlib.Path(root)),
    }
    return cases, verification


def _daemon(containerd: PrivateContainerd, verification: dict, cache: dict) -> DaemonProcess:  # type: ignore[type-arg]
    d = DaemonProcess(containerd.socket, {"verification": {**verification, "cache": cache}})
    d.start()
    return d


@pytest.fixture(scope="module")
def cached(containerd: PrivateContainerd, world) -> Iterator[DaemonProcess]:  # type: ignore[no-untyped-def]
    d = _daemon(containerd, world[1], {"maxEntries": 1024})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def uncached(containerd: PrivateContainerd, world) -> Iterator[DaemonProcess]:  # type: ignore[no-untyped-def]
    d = _daemon(containerd, world[1], {"maxEntries": 0})
    yield d
    d.stop()


def storm(d: DaemonProcess, cases: list[Case], n: int, rng: random.Random) -> list[str]:
    """`n` concurrent Verify calls over `cases`; returns what went wrong (empty: all as expected)."""
    picks = [rng.choice(cases) for _ in range(n)]
    for case in cases:  # every case at least once per storm
        picks[rng.randrange(n)] = case

    def one(case: Case) -> str | None:
        try:
            resp = d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=case.ref), timeout=60)
        except grpc.RpcError as e:
            if case.verified:
                return f"{case.ref}: expected verified, got {e.code().name}: {e.details()}"
            if e.code() != grpc.StatusCode.PERMISSION_DENIED or case.digest not in e.details():
                return (
                    f"{case.ref}: expected PERMISSION_DENIED about {case.digest}, got {e.code().name}: "
                    + str(e.details())
                )
            return None
        if not case.verified:
            return f"{case.ref}: NEGATIVE CASE ANSWERED verified={resp.verified} ({resp.message})"
        if (
            not resp.verified
            or resp.digested_image_ref != f"{case.ref.split(':v1')[0].split('@')[0]}@{case.digest}"
        ):
            return (
                f"{case.ref}: verified={resp.verified} digested={resp.digested_image_ref!r} ({resp.message})"
            )
        return None

    with ThreadPoolExecutor(max_workers=n) as pool:
        return [r for r in pool.map(one, picks) if r]


def test_fifty_concurrent_verifies_cold_then_warm_cache(cached: DaemonProcess, world) -> None:  # type: ignore[no-untyped-def]
    cases, _ = world
    rng = random.Random(1)
    assert storm(cached, cases, 50, rng) == []
    assert storm(cached, cases, 50, rng) == []  # answered from the verdict cache now


def test_fifty_concurrent_verifies_without_cache(uncached: DaemonProcess, world) -> None:  # type: ignore[no-untyped-def]
    cases, _ = world
    assert storm(uncached, cases, 50, random.Random(2)) == []
