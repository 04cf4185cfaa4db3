"""The trust-root manager: where the root comes from, refreshes over a real TUF repository served
on loopback (tests.support.tufrepo, python-tuf on both sides), what a failed or hostile refresh
leaves behind, the schedule, staleness, and verification across a key rotation."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tuf.api.exceptions import SlowRetrievalError

from imaged.errors import FailedPrecondition, PermissionDenied, Unavailable
from imaged.registry.client import RegistryClient
from imaged.verify import ImageVerifier, VerificationConfig
from imaged.verify.trust import EMBEDDED_SOURCE, embedded_public_good
from imaged.verify.trustroots import (
    _FETCH_LOCK,
    START_SPREAD,
    Settings,
    Source,
    TrustRoots,
    TrustState,
    save_root,
)
from imaged.verify.tufclient import BoundedFetcher, FileFetcher, RefreshError, TufSource
from tests.conftest import REPO
from tests.support.registry import Registry, TestCA
from tests.support.sigstore import OciPusher, PrivateSigstore
from tests.support.tufrepo import TufRepository
from tests.verify.test_e2e_registry import registries_config

EMAIL, ISSUER = "release@example.com", "https://accounts.example.com"
OLD = PrivateSigstore(seed=b"trust-old")
NEW = PrivateSigstore(seed=b"trust-new")


def merged_root(*instances: PrivateSigstore) -> bytes:
    """One trusted root listing every instance's CA and logs (a rotation's overlap period)."""
    doc = instances[0].trusted_root()
    for other in instances[1:]:
        more = other.trusted_root()
        for key in ("certificateAuthorities", "tlogs", "ctlogs"):
            doc[key] = doc[key] + more[key]
    return json.dumps(doc, indent=2).encode()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def repo() -> Iterator[TufRepository]:
    r = TufRepository()
    r.publish(OLD.trusted_root_json())
    yield r
    r.close()


def verification(**extra: Any) -> VerificationConfig:
    return VerificationConfig.model_validate(
        {"rules": [{"image": "*", "keyless": {"issuer": ISSUER, "subject": EMAIL}}], **extra}
    )


def private(repo: TufRepository, tmp: pathlib.Path, **tuf: Any) -> VerificationConfig:
    root = repo.write_initial_root(tmp / "tuf-root.json")
    extra = {k: v for k, v in tuf.items() if k == "trustedRoot"}
    t = {k: v for k, v in tuf.items() if k != "trustedRoot"}
    return verification(tuf={"url": repo.url, "root": str(root), **t}, **extra)


def manager(
    config: VerificationConfig, state: pathlib.Path | None, clock: Clock | None = None, **kw: Any
) -> TrustRoots:
    return TrustRoots(Settings.from_config(config, state), clock=clock or Clock(), **kw)


# -- where the root comes from --------------------------------------------------------------------


def test_file_alone_is_used_as_configured_and_never_refreshed(tmp_path: pathlib.Path) -> None:
    f = OLD.write_trusted_root(tmp_path / "root.json")
    m = manager(verification(trustedRoot=str(f)), tmp_path / "state")
    assert m.settings.tuf is None and not m.refreshes and m.directory is None
    state = m.current()
    assert state is not None and state.source is Source.FILE and state.root.source == str(f)
    assert state.describe() == f"file {f}"


def test_public_good_by_default_embedded_until_saved(tmp_path: pathlib.Path) -> None:
    m = manager(verification(), tmp_path / "state")
    assert m.url == "https://tuf-repo-cdn.sigstore.dev" and m.refreshes
    state = m.current()
    assert state is not None and state.source is Source.EMBEDDED and state.root.source == EMBEDDED_SOURCE
    assert state.root.fingerprint == embedded_public_good().fingerprint
    # A root saved by an earlier refresh of the same repository wins over the embedded one.
    saved = m.saved_path
    assert saved is not None
    save_root(saved, OLD.trusted_root_json(), 1_700_000_000.0)
    again = manager(verification(), tmp_path / "state").current()
    assert again is not None and again.source is Source.DISK and again.as_of == 1_700_000_000.0
    assert again.describe() == "disk 2023-11-14T22:13Z"
    # tufRefresh off: no network, but the saved root is still the newest known.
    off = manager(verification(tufRefresh=False), tmp_path / "state")
    assert not off.refreshes and (s := off.current()) is not None and s.source is Source.DISK


def test_private_repository_saved_then_bootstrap_file_then_nothing(
    repo: TufRepository, tmp_path: pathlib.Path
) -> None:
    state_dir = tmp_path / "state"
    assert manager(private(repo, tmp_path), state_dir).current() is None  # no embedded root for it
    boot = OLD.write_trusted_root(tmp_path / "boot.json")
    with_file = manager(private(repo, tmp_path, trustedRoot=str(boot)), state_dir)
    assert with_file.refreshes  # trustedRoot with tuf.url: a starting point, TUF still in charge
    s = with_file.current()
    assert s is not None and s.source is Source.FILE
    saved = with_file.saved_path
    assert saved is not None and saved.parent.name.startswith("127.0.0.1_")
    save_root(saved, NEW.trusted_root_json(), 1_700_000_000.0)
    s = manager(private(repo, tmp_path, trustedRoot=str(boot)), state_dir).current()
    assert s is not None and s.source is Source.DISK
    assert s.root.fingerprint == manager(private(repo, tmp_path), state_dir).current().root.fingerprint  # type: ignore[union-attr]


def test_another_initial_root_does_not_inherit_a_saved_root(
    repo: TufRepository, tmp_path: pathlib.Path
) -> None:
    a = manager(private(repo, tmp_path), tmp_path / "state")
    other = TufRepository()
    try:
        b_root = other.write_initial_root(tmp_path / "other-root.json")
        b = manager(verification(tuf={"url": repo.url, "root": str(b_root)}), tmp_path / "state")
    finally:
        other.close()
    assert a.directory != b.directory  # same URL, another anchor: another directory


def test_saved_root_that_is_not_a_root_is_ignored(tmp_path: pathlib.Path, caplog: Any) -> None:
    m = manager(verification(), tmp_path / "state")
    assert m.saved_path is not None
    m.saved_path.parent.mkdir(parents=True)
    m.saved_path.write_bytes(b'{"mediaType": "garbage"')
    leftover = m.saved_path.parent / ".trusted_root.json.abc123"
    leftover.write_bytes(b"half a ro")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))  # from a refresh long gone
    with caplog.at_level(logging.WARNING):
        s = m.current()
    assert s is not None and s.source is Source.EMBEDDED
    assert "ignoring the saved trust root" in caplog.text
    assert not list(m.saved_path.parent.glob(".trusted_root.json.*"))  # a killed refresh's leftover


def test_a_new_manager_leaves_the_files_of_a_refresh_still_running_alone(tmp_path: pathlib.Path) -> None:
    """A reload builds a new manager on the same directory while the old one may be refreshing:
    only leftovers older than any refresh can run are removed."""
    old = manager(verification(), tmp_path / "state")
    d = old.directory
    assert d is not None and old.saved_path is not None
    d.mkdir(parents=True)
    save_root(old.saved_path, OLD.trusted_root_json(), time.time())
    me, other = os.getpid(), os.getpid() + 1
    running = [d / f".trusted_root.json.{me}.live", d / f".download-{me}-live" / "trusted_root.json"]
    # A process that is gone (a kill -9 before this start), and ours from long ago (its pid reused).
    gone = [d / f".trusted_root.json.{other}.dead", d / f".download-{other}-dead" / "trusted_root.json"]
    stale = [d / f".trusted_root.json.{me}.old", d / f".download-{me}-old" / "trusted_root.json"]
    for f in running + gone + stale:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"part")
    long_ago = time.time() - 3600
    for f in stale:
        os.utime(f, (long_ago, long_ago))
        os.utime(f.parent, (long_ago, long_ago))
    gone += stale
    new = manager(verification(), tmp_path / "state", Clock(time.time()))
    assert (s := new.current()) is not None and s.source is Source.DISK
    assert all(f.exists() for f in running)
    assert not any(f.exists() or (f.parent.name.startswith(".download") and f.parent.exists()) for f in gone)


def test_unreadable_tuf_root_at_start(tmp_path: pathlib.Path, repo: TufRepository) -> None:
    config = private(repo, tmp_path)
    assert config.tuf.root is not None
    os.unlink(config.tuf.root)
    with pytest.raises(FailedPrecondition, match=r"tuf\.root: cannot read"):
        ImageVerifier(config, None, trust=None)  # type: ignore[arg-type]


# -- refreshing -----------------------------------------------------------------------------------


class FakeFetch:
    def __init__(self, *results: bytes | Exception) -> None:
        self.results = list(results)
        self.calls = 0

    def __call__(
        self, source: TufSource, d: pathlib.Path, timeout: float, saved: pathlib.Path | None
    ) -> bytes:
        self.calls += 1
        r = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(r, Exception):
            raise r
        return r


async def test_a_failed_refresh_keeps_the_root_and_logs_once_per_streak(
    tmp_path: pathlib.Path, caplog: Any
) -> None:
    down = RefreshError("DownloadError: connection refused")
    fetch = FakeFetch(down, down, down, OLD.trusted_root_json(), down, down)
    outcomes: list[str] = []
    m = manager(verification(), tmp_path / "state", fetch=fetch, on_refresh=outcomes.append)
    before = m.current()
    with caplog.at_level(logging.DEBUG, logger="imaged.verify.trustroots"):
        for _ in range(3):
            assert await m.refresh() == "failed"
        assert m.current() is before and m.failures == 3 and m.last_error == str(down)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "keeping the embedded" in warnings[0].getMessage()
        assert m.saved_path is not None and not m.saved_path.exists()
        assert await m.refresh() == "updated"
        assert "works again (3 failed)" in caplog.text and m.failures == 0
        for _ in range(2):
            assert await m.refresh() == "failed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # a new streak is reported again
    assert "keeping the refreshed" in warnings[1].getMessage()
    assert outcomes == ["failed"] * 3 + ["updated"] + ["failed"] * 2


async def test_refresh_saves_then_uses_and_an_unchanged_root_keeps_its_object(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    fetch = FakeFetch(OLD.trusted_root_json())
    m = manager(verification(), tmp_path / "state", clock, fetch=fetch)
    assert await m.refresh() == "updated"
    s = m.current()
    assert s is not None and s.source is Source.REFRESHED and s.as_of == clock.now
    assert s.root.source == "https://tuf-repo-cdn.sigstore.dev (TUF)"
    assert m.saved_path is not None and m.saved_path.read_bytes() == OLD.trusted_root_json()
    assert m.saved_path.stat().st_mtime == clock.now
    clock.now += 3600
    assert await m.refresh() == "unchanged"
    s2 = m.current()
    assert s2 is not None and s2.root is s.root and s2.as_of == clock.now  # confirmed current
    assert m.saved_path.stat().st_mtime == clock.now


async def test_a_verified_target_that_is_no_trust_root_is_a_failure(tmp_path: pathlib.Path) -> None:
    m = manager(verification(), tmp_path / "state", fetch=FakeFetch(b'{"not": "a root"}'))
    assert await m.refresh() == "failed" and m.last_error is not None
    assert "not a Sigstore trusted root" in m.last_error
    assert (s := m.current()) is not None and s.source is Source.EMBEDDED


async def test_refresh_is_off_without_tuf_refresh_or_state_dir(tmp_path: pathlib.Path) -> None:
    fetch = FakeFetch(OLD.trusted_root_json())
    assert await manager(verification(tufRefresh=False), tmp_path, fetch=fetch).refresh() == "off"
    assert await manager(verification(), None, fetch=fetch).refresh() == "off"
    assert fetch.calls == 0


async def test_first_root_tries_one_refresh_then_answers_at_once(
    repo: TufRepository, tmp_path: pathlib.Path
) -> None:
    fetch = FakeFetch(RefreshError("down"))
    m = manager(private(repo, tmp_path), tmp_path / "state", fetch=fetch)
    assert await m.first_root() is None and fetch.calls == 1
    assert await m.first_root() is None and fetch.calls == 1  # no refresh per request
    # Verify says so as an error, not a verdict.
    v = ImageVerifier(private(repo, tmp_path), RegistryStub(), trust=m)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="no Sigstore trust root for keyless verification yet: down"):
        await v.verify("r.io/app@sha256:" + "1" * 64)


class RegistryStub:
    def with_credentials(self, *a: Any) -> Any:
        return self


def test_schedule(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    rng_value = [0.5]
    m = manager(verification(), tmp_path / "state", clock, rng=lambda: rng_value[0])
    assert m._first_delay() == 0.5 * START_SPREAD  # embedded: refresh soon after start
    assert m.saved_path is not None
    save_root(m.saved_path, OLD.trusted_root_json(), clock.now - 3600)
    m = manager(verification(), tmp_path / "state", clock, rng=lambda: rng_value[0])
    assert m._first_delay() == pytest.approx(86400 - 3600)  # a fresh saved root: when it is due
    assert m._next_delay("updated") == pytest.approx(86400)
    rng_value[0] = 1.0
    assert m._next_delay("unchanged") == pytest.approx(86400 * 1.1)  # jitter: ±10%
    rng_value[0] = 0.5
    delays = []
    for n in range(1, 13):
        m.failures = n
        delays.append(m._next_delay("failed"))
    assert delays[:3] == [60, 120, 240] and max(delays) == 86400  # backoff, capped at the interval


async def test_run_refreshes_at_start_on_request_and_only_when_needed(tmp_path: pathlib.Path) -> None:
    fetch = FakeFetch(OLD.trusted_root_json())
    config = verification(tuf={"refreshInterval": "1h"})
    m = manager(config, tmp_path / "state", rng=lambda: 0.0, fetch=fetch)
    needed = [True]
    task = asyncio.ensure_future(m.run(lambda: needed[0]))
    try:
        for _ in range(100):
            if fetch.calls:
                break
            await asyncio.sleep(0.01)
        assert fetch.calls == 1  # at start
        m.request_refresh()
        await asyncio.sleep(0.2)
        assert fetch.calls == 2  # SIGHUP
        needed[0] = False
        m.request_refresh()
        await asyncio.sleep(0.2)
        assert fetch.calls == 2  # no keyless rule: nothing to keep fresh
    finally:
        task.cancel()


def test_staleness(tmp_path: pathlib.Path) -> None:
    clock = Clock()
    m = manager(verification(tuf={"maxAge": "24h"}), tmp_path / "state", clock)
    assert m.saved_path is not None
    save_root(m.saved_path, OLD.trusted_root_json(), clock.now - 3600)
    m = manager(verification(tuf={"maxAge": "24h"}), tmp_path / "state", clock)
    assert m.status() is None  # nothing loaded yet: nothing to report
    m.current()
    assert m.status() == ("disk", 3600.0, False) and m.stale() is None
    clock.now += 2 * 86400
    detail = m.stale()
    assert (
        detail is not None
        and "trust root (disk 2027-01-15T07:00Z) is 2.0d old, more than tuf.maxAge 1.0d" in detail
    )
    assert m.status() == ("disk", 2 * 86400 + 3600.0, True)
    assert manager(verification(tuf={"maxAge": 0}), tmp_path / "state", clock).stale() is None


# -- a real TUF repository on loopback: what python-tuf refuses stays refused --------------------


async def test_refresh_from_a_loopback_repository(tmp_path: pathlib.Path) -> None:
    r = TufRepository()
    try:
        r.publish(OLD.trusted_root_json())
        m = manager(private(r, tmp_path), tmp_path / "state")
        assert await m.refresh() == "updated"
        s = m.current()
        assert s is not None and s.source is Source.REFRESHED
        assert m.saved_path is not None and m.saved_path.read_bytes() == OLD.trusted_root_json()
        assert (m.saved_path.parent / "metadata" / "root_history" / "1.root.json").exists()
        fetched = len(r.requests)
        assert await m.refresh() == "unchanged"
        assert not any(p.startswith("targets/") for p in r.requests[fetched:])  # our saved copy matched
        r.rotate_root("timestamp")  # an honest key rotation of the repository itself
        r.publish(merged_root(OLD, NEW))
        assert await m.refresh() == "updated"
        assert m.saved_path.read_bytes() == merged_root(OLD, NEW)
    finally:
        r.close()


async def _refused(r: TufRepository, m: TrustRoots, expected: str) -> None:
    before, saved = m.current(), m.saved_path
    assert before is not None and saved is not None
    kept = saved.read_bytes()
    assert await m.refresh() == "failed"
    assert m.last_error is not None and expected in m.last_error, m.last_error
    assert m.current() is before and saved.read_bytes() == kept


@pytest.fixture
async def honest(tmp_path: pathlib.Path) -> AsyncIterator[tuple[TufRepository, TrustRoots]]:
    r = TufRepository()
    r.publish(OLD.trusted_root_json())
    m = manager(private(r, tmp_path), tmp_path / "state")
    assert await m.refresh() == "updated"
    r.publish(merged_root(OLD, NEW))
    assert await m.refresh() == "updated"
    yield r, m
    r.close()


async def test_metadata_rollback_is_refused(honest: tuple[TufRepository, TrustRoots]) -> None:
    r, m = honest
    seen = r.timestamp_json()
    r.publish(NEW.trusted_root_json())
    assert await m.refresh() == "updated"  # the client has seen a newer timestamp since
    r.serve_timestamp(seen)  # correctly signed and not expired, but older: a rollback (or freeze)
    await _refused(r, m, "BadVersionNumberError")


async def test_expired_metadata_is_refused(honest: tuple[TufRepository, TrustRoots]) -> None:
    r, m = honest
    r.publish_expired(NEW.trusted_root_json())
    await _refused(r, m, "ExpiredMetadataError")


async def test_a_root_signed_by_the_wrong_keys_is_refused(honest: tuple[TufRepository, TrustRoots]) -> None:
    r, m = honest
    r.serve_root_signed_by_wrong_keys()
    await _refused(r, m, "UnsignedMetadataError: root was signed by 0/1 keys")


async def test_another_repository_at_the_mirror_url_is_refused(tmp_path: pathlib.Path) -> None:
    ours, theirs = TufRepository(), TufRepository()
    try:
        ours.publish(OLD.trusted_root_json())
        theirs.publish(NEW.trusted_root_json())
        config = verification(
            tuf={"url": theirs.url, "root": str(ours.write_initial_root(tmp_path / "ours.json"))}
        )
        m = manager(config, tmp_path / "state")
        assert await m.refresh() == "failed"
        assert m.last_error is not None and "UnsignedMetadataError" in m.last_error
        assert m.current() is None and m.saved_path is not None and not m.saved_path.exists()
    finally:
        ours.close()
        theirs.close()


async def test_a_stalled_download_fails_within_the_timeout(tmp_path: pathlib.Path) -> None:
    r = TufRepository()
    try:
        r.publish(OLD.trusted_root_json())
        r.stall_targets.set()
        m = manager(private(r, tmp_path, timeout="2s"), tmp_path / "state")
        start = time.monotonic()
        assert await m.refresh() == "failed"
        assert time.monotonic() - start < 10
        assert m.last_error is not None and "timed out" in m.last_error
    finally:
        r.close()


class Trickle:
    """A loopback HTTP server that answers one byte at a time, every `pause` seconds: in its
    headers, or in a body it announces as 100000 bytes long. Counts the requests it gets."""

    def __init__(self, where: str, pause: float = 0.3) -> None:
        self.where, self.pause, self.requests = where, pause, 0
        self.stop = threading.Event()
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        self.requests += 1
        with c:
            c.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
            slow = head + b"X-Slow: " + b"x" * 1000 if self.where == "headers" else b""
            try:
                if not slow:
                    c.sendall(head + b"\r\n")
                for byte in slow or b"x" * 100000:
                    if self.stop.wait(self.pause):
                        return
                    c.sendall(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


def consume(fetcher: BoundedFetcher, url: str) -> Exception | None:
    try:
        for _ in fetcher.fetch(url):
            pass
    except Exception as e:
        return e
    return None


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_cannot_stretch_the_deadline(where: str) -> None:
    """One byte every 0.3 s resets a per-read timeout forever: the deadline is the whole refresh's."""
    server = Trickle(where)
    try:
        fetcher = BoundedFetcher(time.monotonic() + 2.0)
        start = time.monotonic()
        result: list[Exception | None] = []
        t = threading.Thread(target=lambda: result.append(consume(fetcher, server.url + "/timestamp.json")))
        t.daemon = True
        t.start()
        t.join(8)
        assert not t.is_alive(), f"still reading {time.monotonic() - start:.1f}s after a 2s deadline"
        assert time.monotonic() - start < 4
        [error] = result
        assert isinstance(error, SlowRetrievalError) and "timed out" in str(error), error
        assert server.requests == 1  # not retried
        fetcher.close()
    finally:
        server.close()


async def test_a_refresh_still_running_does_not_make_the_next_wait(tmp_path: pathlib.Path) -> None:
    """The python-tuf lock is taken with a timeout: a refresh that never ends cannot stop all others
    (nor keep a first keyless Verify waiting)."""
    m = manager(
        verification(tuf={"timeout": "1s"}), tmp_path / "state", fetch=FakeFetch(OLD.trusted_root_json())
    )
    assert _FETCH_LOCK.acquire(timeout=5)
    try:
        start = time.monotonic()
        outcome = await asyncio.wait_for(m.refresh(), 10)
        assert outcome == "failed" and time.monotonic() - start < 5
        assert m.last_error is not None and "another trust root refresh is still running" in m.last_error
    finally:
        _FETCH_LOCK.release()
    assert await m.refresh() == "updated"


# -- private mirrors: HTTPS with a private CA, and a repository copied onto the node (file://) ------


@pytest.fixture
def ca(tmp_path: pathlib.Path) -> TestCA:
    d = tmp_path / "pki"
    d.mkdir()
    return TestCA(d, "private TUF mirror CA")


async def test_https_mirror_with_a_private_ca(ca: TestCA, tmp_path: pathlib.Path) -> None:
    """tuf.caFile is trusted besides the system CAs; without it the refresh fails, says which
    setting to set, counts as failed, and the last good root stays in use."""
    r = TufRepository(tls=ca.issue("tuf-mirror"))
    try:
        assert r.url.startswith("https://127.0.0.1:")
        r.publish(OLD.trusted_root_json())
        clock = Clock(time.time())
        with_ca = private(r, tmp_path, caFile=str(ca.cert_path), maxAge="1h")
        assert await manager(with_ca, tmp_path / "state", clock).refresh() == "updated"
        r.publish(merged_root(OLD, NEW))

        outcomes: list[str] = []
        m = manager(private(r, tmp_path, maxAge="1h"), tmp_path / "state", clock, on_refresh=outcomes.append)
        assert m.directory == manager(with_ca, tmp_path / "state").directory  # same repository state
        before = m.current()
        assert before is not None and before.source is Source.DISK
        assert await m.refresh() == "failed" and outcomes == ["failed"]  # the metric's counter
        assert m.last_error is not None and "CERTIFICATE_VERIFY_FAILED" in m.last_error
        assert "set verification.tuf.caFile to the PEM file of the CA" in m.last_error
        assert m.current() is before and m.saved_path is not None
        assert m.saved_path.read_bytes() == OLD.trusted_root_json()  # the last good root, kept
        clock.now += 7200
        detail = m.stale()  # the health detail of imaged.TrustRoot once the root is too old
        assert detail is not None and "more than tuf.maxAge" in detail and "verification.tuf.caFile" in detail

        again = manager(with_ca, tmp_path / "state", clock)
        assert await again.refresh() == "updated"
        assert m.saved_path.read_bytes() == merged_root(OLD, NEW)
        # Another CA than the one that issued the server's certificate is named as such.
        other = TestCA(tmp_path, "another CA")
        wrong = manager(private(r, tmp_path, caFile=str(other.cert_path)), tmp_path / "state", clock)
        assert await wrong.refresh() == "failed" and wrong.last_error is not None
        assert f"issued neither by verification.tuf.caFile {other.cert_path}" in wrong.last_error
    finally:
        r.close()


async def test_https_mirror_wanting_a_client_certificate(ca: TestCA, tmp_path: pathlib.Path) -> None:
    r = TufRepository(tls=ca.issue("tuf-mirror"), client_ca=ca.cert_path)
    try:
        r.publish(OLD.trusted_root_json())
        m = manager(private(r, tmp_path, caFile=str(ca.cert_path)), tmp_path / "state")
        assert await m.refresh() == "failed" and m.last_error is not None
        assert "wants a client certificate: verification.tuf.certFile and keyFile" in m.last_error
        assert r.requests == []  # refused in the handshake
        cert, key = ca.issue("node", server=False)
        tls = {"caFile": str(ca.cert_path), "certFile": str(cert), "keyFile": str(key)}
        m = manager(private(r, tmp_path, **tls), tmp_path / "state")
        assert await m.refresh() == "updated"
        assert m.saved_path is not None and m.saved_path.read_bytes() == OLD.trusted_root_json()
    finally:
        r.close()


async def test_tls_files_are_read_at_each_refresh_and_named_when_unusable(
    ca: TestCA, tmp_path: pathlib.Path
) -> None:
    """Not opened at load (a PolicyService.Test candidate names files the daemon must not open),
    so a missing, blocking or malformed file fails the refresh, naming the setting."""
    r = TufRepository(tls=ca.issue("tuf-mirror"))
    try:
        r.publish(OLD.trusted_root_json())
        ca_file = tmp_path / "mirror-ca.pem"
        config = private(r, tmp_path, caFile=str(ca_file))  # validated without the file
        m = manager(config, tmp_path / "state")
        assert await m.refresh() == "failed"
        assert m.last_error == f"verification.tuf.caFile {ca_file}: No such file or directory"
        os.mkfifo(ca_file)  # a FIFO would block OpenSSL's read forever
        start = time.monotonic()
        assert await m.refresh() == "failed" and time.monotonic() - start < 5
        assert m.last_error == f"verification.tuf.caFile {ca_file}: not a regular file"
        ca_file.unlink()
        ca_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        assert await m.refresh() == "failed"
        assert m.last_error is not None and m.last_error.startswith(f"verification.tuf.caFile {ca_file}: ")
        ca_file.write_bytes(ca.cert_path.read_bytes())  # fixed in place: the next refresh works
        assert await m.refresh() == "updated"
        cert, _ = ca.issue("node", server=False)
        keyless = private(r, tmp_path, certFile=str(cert), keyFile=str(tmp_path / "gone.pem"))
        m = manager(keyless, tmp_path / "state")
        assert await m.refresh() == "failed"
        assert m.last_error == f"verification.tuf.keyFile {tmp_path / 'gone.pem'}: No such file or directory"
    finally:
        r.close()


@pytest.mark.parametrize(
    ("tuf", "message"),
    [
        ({"url": "file://mirror.example/srv/tuf"}, "a file URL is file:///absolute/path"),
        ({"url": "file:relative/tuf"}, "a file URL is file:///absolute/path"),
        ({"url": "file:///srv/tuf/../etc"}, "without . or .. segments"),
        ({"url": "file:///srv/tuf?x=1"}, "no query, fragment or whitespace"),
        ({"url": "ftp://mirror.example/tuf"}, "url must be an http(s) URL or file:///path"),
        ({"url": "http://mirror.example/tuf", "caFile": "/ca.pem"}, "caFile is for an https:// url"),
        ({"url": "file:///srv/tuf", "caFile": "/ca.pem"}, "caFile is for an https:// url; url is file://"),
        ({"url": "https://mirror.example", "certFile": "/c.pem"}, "certFile and keyFile must be given"),
        ({"url": "https://mirror.example", "caFile": " "}, "caFile is empty"),
    ],
)
def test_tuf_settings_refused_at_load(
    tuf: dict[str, Any], message: str, repo: TufRepository, tmp_path: pathlib.Path
) -> None:
    root = str(repo.write_initial_root(tmp_path / "root.json"))
    with pytest.raises(ValueError, match=re.escape(message)):
        verification(tuf={"root": root, **tuf})


def test_tuf_settings_accepted_at_load(repo: TufRepository, tmp_path: pathlib.Path) -> None:
    root = str(repo.write_initial_root(tmp_path / "root.json"))
    c = verification(tuf={"url": f"file://{tmp_path}/copy/", "root": root})
    assert c.tuf.source_url == f"file://{tmp_path}/copy"
    # The public-good instance through a TLS-inspecting proxy: its CA, added to the system's.
    assert verification(tuf={"caFile": "/etc/corp-ca.pem"}).tuf.ca_file == "/etc/corp-ca.pem"
    https = verification(
        tuf={
            "url": "https://tuf.corp.example",
            "root": root,
            "ca_file": "/ca.pem",
            "certFile": "/c",
            "keyFile": "/k",
        }
    )
    s = Settings.from_config(https, tmp_path)
    assert s.tuf is not None and s.tuf.ca_file == "/ca.pem" and s.tuf.client_cert == ("/c", "/k")
    # Other TLS files: the same repository and state (a candidate policy shares the running root),
    # but other settings (a reload makes a new manager, which refreshes with them).
    plain = Settings.from_config(
        verification(tuf={"url": "https://tuf.corp.example", "root": root}), tmp_path
    )
    assert s.names_same_root(plain) and s != plain
    assert (
        manager(https, tmp_path).directory
        == manager(verification(tuf={"url": "https://tuf.corp.example", "root": root}), tmp_path).directory
    )


async def test_refresh_from_a_repository_copied_onto_the_node(tmp_path: pathlib.Path) -> None:
    """An air-gapped node: the operator copies the repository (as served) into a directory."""
    r = TufRepository()
    try:
        r.publish(OLD.trusted_root_json())
        copy = tmp_path / "mirror"
        url = r.export(copy)
        assert url == f"file://{copy}"
        m = manager(private(r, tmp_path, url=url), tmp_path / "state")
        assert m.directory is not None and m.directory.name.startswith("file-")
        assert await m.refresh() == "updated"
        assert m.saved_path is not None and m.saved_path.read_bytes() == OLD.trusted_root_json()
        assert await m.refresh() == "unchanged"
        r.rotate_root("timestamp")  # a key rotation of the repository, then a new Sigstore root
        r.publish(merged_root(OLD, NEW))
        r.export(copy)  # the next copy
        assert await m.refresh() == "updated"
        assert m.saved_path.read_bytes() == merged_root(OLD, NEW)
        assert r.requests == []  # nothing over the network
    finally:
        r.close()


@pytest.fixture
async def honest_copy(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[TufRepository, TrustRoots, pathlib.Path]]:
    r = TufRepository()
    copy = tmp_path / "mirror"
    r.publish(OLD.trusted_root_json())
    m = manager(private(r, tmp_path, url=r.export(copy)), tmp_path / "state")
    assert await m.refresh() == "updated"
    r.publish(merged_root(OLD, NEW))
    r.export(copy)
    assert await m.refresh() == "updated"
    yield r, m, copy
    r.close()


async def test_a_rolled_back_copy_is_refused(
    honest_copy: tuple[TufRepository, TrustRoots, pathlib.Path],
) -> None:
    r, m, copy = honest_copy
    seen = r.timestamp_json()
    r.publish(NEW.trusted_root_json())
    r.export(copy)
    assert await m.refresh() == "updated"
    r.serve_timestamp(seen)
    r.export(copy)  # an older copy put back on the node
    await _refused(r, m, "BadVersionNumberError")


async def test_an_expired_copy_is_refused(
    honest_copy: tuple[TufRepository, TrustRoots, pathlib.Path],
) -> None:
    r, m, copy = honest_copy
    r.publish_expired(NEW.trusted_root_json())
    r.export(copy)
    await _refused(r, m, "ExpiredMetadataError")


async def test_a_copy_with_a_root_signed_by_the_wrong_keys_is_refused(
    honest_copy: tuple[TufRepository, TrustRoots, pathlib.Path],
) -> None:
    r, m, copy = honest_copy
    r.serve_root_signed_by_wrong_keys()
    r.export(copy)
    await _refused(r, m, "UnsignedMetadataError: root was signed by 0/1 keys")


async def test_a_copy_that_is_missing_or_not_regular_files_fails_clearly(
    honest_copy: tuple[TufRepository, TrustRoots, pathlib.Path],
) -> None:
    r, m, copy = honest_copy
    (copy / "timestamp.json").unlink()
    os.mkfifo(copy / "timestamp.json")  # never waited on
    start = time.monotonic()
    await _refused(r, m, f"{copy / 'timestamp.json'}: not a regular file")
    assert time.monotonic() - start < 5
    copy.rename(copy.with_name("elsewhere"))
    await _refused(r, m, f"verification.tuf.url: {copy} is not a directory")


def test_the_file_fetcher_reads_within_the_repository_and_within_bounds(tmp_path: pathlib.Path) -> None:
    from tuf.api.exceptions import DownloadError, DownloadHTTPError, DownloadLengthMismatchError

    repo_dir = tmp_path / "mirror"
    (repo_dir / "targets").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"outside")
    (repo_dir / "1.root.json").write_bytes(b"{}")
    huge = repo_dir / "timestamp.json"
    with huge.open("wb") as f:
        f.truncate(16 * 1024**3)  # 16 GiB, sparse: read to the end, it would take minutes
    base = repo_dir.as_uri()
    fetcher = FileFetcher(base, time.monotonic() + 30)
    assert fetcher.download_bytes(f"{base}/1.root.json", 100) == b"{}"
    start = time.monotonic()
    with pytest.raises(DownloadLengthMismatchError):
        fetcher.download_bytes(f"{base}/timestamp.json", 16384)  # python-tuf's bound for it
    assert time.monotonic() - start < 2
    with pytest.raises(DownloadHTTPError) as missing:
        fetcher.download_bytes(f"{base}/2.root.json", 100)  # how python-tuf learns there is no newer root
    assert missing.value.status_code == 404
    for escape in (f"{base}/../secret", f"{base}/targets/%2e%2e/%2e%2e/secret", f"file://{tmp_path}/secret"):
        with pytest.raises(DownloadError, match=r"(inside|outside) the repository"):
            fetcher.download_bytes(escape, 100)
    # A link is followed only while it stays inside: checked on the file opened.
    (repo_dir / "root.json").symlink_to("1.root.json")
    assert fetcher.download_bytes(f"{base}/root.json", 100) == b"{}"
    (repo_dir / "3.root.json").symlink_to(tmp_path / "secret")
    (repo_dir / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    for linked in (f"{base}/3.root.json", f"{base}/elsewhere/secret"):
        with pytest.raises(DownloadError, match="leads outside the repository"):
            fetcher.download_bytes(linked, 100)
    late = FileFetcher(base, time.monotonic() - 1)
    with pytest.raises(SlowRetrievalError):
        late.download_bytes(f"{base}/1.root.json", 100)


class _Redirecting(http.server.BaseHTTPRequestHandler):
    to = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.to + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirect_from_https_to_http_is_refused(ca: TestCA, tmp_path: pathlib.Path) -> None:
    """caFile and the client certificate apply to https only: a mirror that sends the client to
    plain http would silently drop them, so the redirect is refused; https to https is followed."""
    from tuf.api.exceptions import DownloadError

    r = TufRepository()  # plain http, the redirect's target
    cert, key = ca.issue("redirector")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    https = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        r.publish(OLD.trusted_root_json())
        _Redirecting.to = r.url.rstrip("/")
        fetcher = BoundedFetcher(time.monotonic() + 30, ca_file=str(ca.cert_path))
        with pytest.raises(DownloadError, match="redirected from https to http: refused"):
            fetcher.download_bytes(f"{https}/1.root.json", 1 << 20)
        assert r.requests == []  # nothing was asked of the plain-http server
        s = TufRepository(tls=ca.issue("tuf-mirror"))
        try:
            s.publish(OLD.trusted_root_json())
            _Redirecting.to = s.url.rstrip("/")
            assert fetcher.download_bytes(f"{https}/1.root.json", 1 << 20) == s.files["1.root.json"]
            client = ca.issue("node", server=False)
            with_cert = BoundedFetcher(
                time.monotonic() + 30, ca_file=str(ca.cert_path), client_cert=(str(client[0]), str(client[1]))
            )
            _Redirecting.to = s.url.rstrip("/").replace("127.0.0.1", "localhost")
            with pytest.raises(DownloadError, match="redirected to another host"):
                with_cert.download_bytes(f"{https}/1.root.json", 1 << 20)
        finally:
            s.close()
    finally:
        server.shutdown()
        server.server_close()
        r.close()


def test_a_password_protected_key_is_refused_without_a_prompt(ca: TestCA, tmp_path: pathlib.Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from imaged.verify.tufclient import tls_context

    cert, key = ca.issue("node", server=False)
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(RefreshError, match="the key is encrypted"):
        tls_context(None, (str(cert), str(locked)))


# -- the saved root survives kill -9 at any moment --------------------------------------------------

WRITER = """
import sys, pathlib
from imaged.verify.trustroots import save_root
path = pathlib.Path(sys.argv[1])
a, b = (bytes([c]) * 3_000_000 for c in b"ab")
print("ready", flush=True)
n = 0
while True:
    n += 1
    save_root(path, a if n % 2 else b, float(n))
"""


def test_kill_9_while_saving_leaves_a_whole_root(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "trust" / "trusted_root.json"
    whole = {b"a" * 3_000_000, b"b" * 3_000_000}
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for i in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.05 + 0.037 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        if path.exists():
            assert path.read_bytes() in whole
    assert path.exists()
    # The next start, once no refresh can still be running (an hour later), removes what is left.
    later = manager(verification(), tmp_path / "other", Clock(time.time() + 3600))
    later._remove_leftovers(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["trusted_root.json"]


# -- verification across a key rotation (real registry, real TUF repository) ----------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


async def test_a_rotation_published_over_tuf_is_trusted_after_a_refresh(
    registry: Registry, tmp_path: pathlib.Path
) -> None:
    r = TufRepository()
    r.publish(OLD.trusted_root_json())
    push = OciPusher(registry)
    image = push.push_minimal_image("trust/rotated", "v1", label="rotated")
    push.push_bundle_referrer(
        "trust/rotated", image, NEW.sign_bundle(image.digest, NEW.issue_leaf(EMAIL, ISSUER))
    )
    config = VerificationConfig.model_validate(
        {
            "rules": [{"image": f"{registry.host}/trust/*", "keyless": {"issuer": ISSUER, "subject": EMAIL}}],
            "tuf": {"url": r.url, "root": str(r.write_initial_root(tmp_path / "root.json"))},
        }
    )
    m = manager(config, tmp_path / "state", Clock(time.time()))
    ref = f"{registry.host}/trust/rotated:v1"
    try:
        async with RegistryClient(registries_config()) as client:
            v = ImageVerifier(config, client, trust=m)
            with pytest.raises(PermissionDenied, match="no signature satisfies"):
                await v.verify(ref)  # first use: one refresh fetched the old root
            assert (s := m.current()) is not None and s.source is Source.REFRESHED
            old_rule = v.match(ref)
            r.publish(merged_root(OLD, NEW))  # the new CA and logs, published over TUF
            with pytest.raises(PermissionDenied):
                await v.verify(ref)  # not before a refresh (and the failure is cached)
            assert await m.refresh() == "updated"
            verdict = await v.verify(ref)  # the cached failure belonged to the old root
            assert verdict.verified
            s = m.current()
            assert s is not None and verdict.message.endswith(f"; trust root: {s.describe()}")
            assert s.describe().startswith("refreshed 20")
            new_rule = v.match(ref)
            assert old_rule is not None and new_rule is not None
            assert old_rule.fingerprint != new_rule.fingerprint  # the verdict cache key
    finally:
        r.close()


async def test_a_key_verifies_without_a_trust_root_when_keyless_is_not_needed(
    registry: Registry, repo: TufRepository, tmp_path: pathlib.Path
) -> None:
    """keyless and publicKey in one rule, no root yet (a private repository never refreshed): the
    key alone can meet threshold 1; UNAVAILABLE only when the keyless authorities were needed."""
    key = OLD.static_key("ops")
    push = OciPusher(registry)
    signed = push.push_minimal_image("trust/keyed", "v1", label="keyed")
    sig = OLD.sign_legacy(signed.digest, f"{registry.host}/trust/keyed", key, tlog=False)
    push.push_legacy_signatures("trust/keyed", signed.digest, [sig])
    push.push_minimal_image("trust/unsigned", "v1", label="unsigned")

    def config(threshold: int) -> VerificationConfig:
        rule = {
            "image": f"{registry.host}/trust/*",
            "keyless": {"issuer": ISSUER, "subject": EMAIL},
            "publicKey": {"certificate": key.public_pem.decode()},
            "threshold": threshold,
        }
        return private(repo, tmp_path).model_copy(update={"rules": VerificationConfig(rules=[rule]).rules})

    async with RegistryClient(registries_config()) as client:
        m = manager(config(1), tmp_path / "state", fetch=FakeFetch(RefreshError("down")))
        v = ImageVerifier(config(1), client, trust=m)
        verdict = await v.verify(f"{registry.host}/trust/keyed:v1")
        assert verdict.verified and "ECDSA secp256r1 key" in verdict.message
        assert "trust root:" not in verdict.message  # the keyless authority was not used
        # Unsigned: the keyless authority might have verified it, had there been a root.
        for _ in range(2):  # the second time from the verdict cache: still not a refusal
            with pytest.raises(Unavailable, match="no Sigstore trust root for keyless verification yet"):
                await v.verify(f"{registry.host}/trust/unsigned:v1")
        # Threshold 2 needs the keyless authority whatever the image carries.
        both = ImageVerifier(config(2), client, trust=m)
        with pytest.raises(Unavailable, match="no Sigstore trust root for keyless verification yet"):
            await both.verify(f"{registry.host}/trust/keyed:v1")


def test_trust_state_describe() -> None:
    root = embedded_public_good()
    assert TrustState(root, Source.REFRESHED, 1_796_637_600.0).describe() == "refreshed 2026-12-07T10:00Z"
    assert TrustState(root, Source.EMBEDDED, None).describe().startswith("embedded (sigstore-python ")
