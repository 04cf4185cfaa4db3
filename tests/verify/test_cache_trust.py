"""The verdict cache on its own, trust root loading and reload safety (refreshes: test_trustroots.py)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import pytest

from imaged.errors import FailedPrecondition, Unavailable
from imaged.verify import ImageVerifier, VerificationConfig
from imaged.verify.cache import Outcome, VerdictCache
from imaged.verify.trust import TrustRootError, embedded_public_good, parse_trust_root
from tests.support.sigstore import PrivateSigstore
from tests.verify.fake_registry import FakeRegistry

OK, NO = Outcome(True, "ok"), Outcome(False, "no")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def counter(outcome: Outcome | Exception, delay: float = 0.0) -> tuple[list[int], Any]:
    calls: list[int] = []

    async def compute() -> Outcome:
        calls.append(1)
        await asyncio.sleep(delay)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, compute


async def test_ttls_by_outcome() -> None:
    clock = Clock()
    cache = VerdictCache(10, 2, 100, clock=clock)
    ok_calls, ok = counter(OK)
    no_calls, no = counter(NO)
    for _ in range(3):
        assert await cache.get("a", ok) == OK
        assert await cache.get("b", no) == NO
    assert (len(ok_calls), len(no_calls)) == (1, 1)
    clock.now = 3
    await cache.get("a", ok)
    await cache.get("b", no)
    assert (len(ok_calls), len(no_calls)) == (1, 2)
    clock.now = 11
    await cache.get("a", ok)
    assert len(ok_calls) == 2


async def test_errors_reach_every_waiter_and_are_not_remembered() -> None:
    cache = VerdictCache(10, 10, 100)
    calls, boom = counter(Unavailable("down"), delay=0.02)
    results = await asyncio.gather(*(cache.get("k", boom) for _ in range(5)), return_exceptions=True)
    assert len(calls) == 1 and all(isinstance(r, Unavailable) for r in results)
    assert len(cache) == 0
    ok_calls, ok = counter(OK)
    assert await cache.get("k", ok) == OK and len(ok_calls) == 1


async def test_clear_during_flight_drops_the_result() -> None:
    cache = VerdictCache(10, 10, 100)
    _, slow = counter(OK, delay=0.02)
    task = asyncio.ensure_future(cache.get("k", slow))
    await asyncio.sleep(0.005)
    cache.clear()
    assert await task == OK
    assert cache.peek("k") is None


async def test_lru_bound_and_disabled_cache() -> None:
    cache = VerdictCache(10, 10, 2)
    for k in "abc":
        await cache.get(k, counter(OK)[1])
    assert cache.peek("a") is None and cache.peek("b") == OK and cache.peek("c") == OK
    off = VerdictCache(10, 10, 0)
    await off.get("a", counter(OK)[1])
    assert len(off) == 0


# -- trust roots ----------------------------------------------------------------------------------


def test_embedded_public_good_root() -> None:
    root = embedded_public_good()
    assert root.fingerprint == "sha256:6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66"
    assert len(root.authorities) == 2
    rekor_v1 = bytes.fromhex("c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d")
    assert root.rekor_keys[rekor_v1].url == "https://rekor.sigstore.dev"
    assert root.verifier is root.verifier  # built once


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (
            b'{"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.2"}',
            "not a Sigstore trusted root",
        ),
        (b" " * (1024 * 1024 + 1), "larger than"),
    ],
)
def test_bad_trust_roots(data: bytes, message: str) -> None:
    with pytest.raises(TrustRootError, match=message):
        parse_trust_root(data, "test")


def test_trust_root_without_cas_or_logs(tmp_path: pathlib.Path) -> None:
    doc = PrivateSigstore().trusted_root()
    doc["certificateAuthorities"], doc["tlogs"] = [], []
    with pytest.raises(TrustRootError, match="no certificate authorities and no transparency logs"):
        parse_trust_root(json.dumps(doc).encode(), "test")


def _keyless_config(**extra: Any) -> VerificationConfig:
    return VerificationConfig.model_validate(
        {"rules": [{"image": "*", "keyless": {"issuer": "i", "subject": "s"}}], **extra}
    )


def test_reload_keeps_the_old_policy_when_the_new_trust_root_is_unusable(tmp_path: pathlib.Path) -> None:
    root = PrivateSigstore().write_trusted_root(tmp_path / "root.json")
    v = ImageVerifier(_keyless_config(trustedRoot=str(root)), FakeRegistry())
    before = v.config
    new = _keyless_config(trustedRoot=str(root))
    root.write_text("garbage")  # valid at load, gone bad before reload
    with pytest.raises(FailedPrecondition, match="verification trusted root unusable"):
        v.reload(new)
    assert v.config is before
