"""The trust-root manager: which Sigstore root keyless checks use now, and keeping it fresh.

Two modes, from the `verification` section:

- **file**: `trustedRoot` without `tuf.url`. That file is the root (a private Sigstore without
  TUF), as configured, never refreshed.
- **TUF** (everything else): the repository `tuf.url` (default: the Sigstore public-good
  instance; https with `tuf.caFile` and a client certificate if given, http, or a `file://`
  copy on the node, see `tufclient`) with its initial root. At start the root is the last
  good one saved under the state directory for that repository, else the root embedded in
  sigstore-python (public-good only), else `trustedRoot` (a bootstrap copy for a private
  repository). With `tufRefresh` (the
  default), python-tuf refreshes it at start, every `tuf.refreshInterval` (jittered) and on
  SIGHUP; each verified root is saved atomically (`save_root`) before it is used.

A failed refresh changes nothing: the previous root stays in use, the first failure of a streak
is logged as a warning (the next ones at debug), and a verification never fails because of it.
The verdict cache needs no flush: rule fingerprints include the root's, so a new root gets new
cache keys (see `service._compile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import pathlib
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from imaged.verify.config import MAX_TUF_ROOT_SIZE, PUBLIC_GOOD_TUF_URL, VerificationConfig
from imaged.verify.files import read_regular_file
from imaged.verify.trust import (
    TrustRoot,
    TrustRootError,
    embedded_public_good,
    embedded_public_good_mtime,
    embedded_public_good_tuf_root,
    load_trust_root_file,
    parse_trust_root,
)
from imaged.verify.tufclient import DOWNLOAD_PREFIX, RefreshError, TufSource, describe, fetch_trusted_root

log = logging.getLogger(__name__)

SAVED_NAME = "trusted_root.json"
# First retry after a failed refresh; doubled each time, at most the refresh interval.
RETRY_DELAY = 60.0
# At start, refreshes of nodes restarted together spread over up to this long.
START_SPREAD = 10.0
T = TypeVar("T")
# python-tuf's Updater does not support two instances on one metadata directory at once.
_FETCH_LOCK = threading.Lock()
# What a refresh may take past waiting for the lock and its own deadline (disk, parsing) before
# the caller stops waiting for it.
FETCH_GRACE = 30.0


class Source(enum.StrEnum):
    EMBEDDED = "embedded"
    DISK = "disk"
    REFRESHED = "refreshed"
    FILE = "file"


def _minute(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%MZ")


@dataclass(frozen=True)
class TrustState:
    """A root in use, where it came from, and when it was last known current (epoch seconds:
    the refresh that confirmed it, else its file's modification time)."""

    root: TrustRoot
    source: Source
    as_of: float | None

    def age(self, now: float) -> float | None:
        return None if self.as_of is None else max(0.0, now - self.as_of)

    def describe(self) -> str:
        """For Verify messages: `refreshed 2026-12-07T10:00Z`, `file /etc/imaged/root.json`."""
        if self.source is Source.FILE:
            return f"file {self.root.source}"
        if self.source is Source.EMBEDDED:
            from sigstore import __version__ as sigstore_version

            return f"embedded (sigstore-python {sigstore_version})"
        return f"{self.source} {_minute(self.as_of)}" if self.as_of is not None else str(self.source)


@dataclass(frozen=True)
class Settings:
    """What the manager is made of; a reload with equal settings keeps the running manager."""

    file: str | None
    tuf: TufSource | None  # None: file mode
    refresh: bool
    interval: float
    max_age: float
    timeout: float
    state_dir: pathlib.Path | None

    def names_same_root(self, other: Settings) -> bool:
        """Whether `other` names the same root: the trustedRoot file, the TUF repository and its
        initial root, and where its state is kept; not how often, how long or over which TLS
        settings it is refreshed."""

        def anchor(s: Settings) -> tuple[str, bytes] | None:
            return s.tuf.anchor if s.tuf is not None else None

        return (self.file, anchor(self), self.state_dir) == (other.file, anchor(other), other.state_dir)

    @classmethod
    def from_config(cls, config: VerificationConfig, state_dir: str | pathlib.Path | None) -> Settings:
        """Raises TrustRootError when the configured initial TUF root cannot be read."""
        t = config.tuf
        tuf: TufSource | None = None
        if config.trusted_root is None or t.url is not None:
            url = t.source_url
            if t.root is not None:
                try:
                    bootstrap = read_regular_file(t.root, MAX_TUF_ROOT_SIZE)
                except OSError as e:
                    raise TrustRootError(f"tuf.root: cannot read {t.root}: {e.strerror}") from None
                if len(bootstrap) > MAX_TUF_ROOT_SIZE:
                    raise TrustRootError(f"tuf.root: {t.root} is larger than {MAX_TUF_ROOT_SIZE} bytes")
            else:
                bootstrap = embedded_public_good_tuf_root()
            tuf = TufSource(
                url,
                bootstrap,
                ca_file=t.ca_file,
                client_cert=(t.cert_file, t.key_file) if t.cert_file and t.key_file else None,
            )
        return cls(
            file=config.trusted_root,
            tuf=tuf,
            refresh=tuf is not None and config.tuf_refresh and state_dir is not None,
            interval=t.refresh_interval,
            max_age=t.max_age,
            timeout=t.timeout,
            state_dir=pathlib.Path(state_dir) if state_dir is not None else None,
        )


def save_root(path: pathlib.Path, data: bytes, as_of: float) -> None:
    """Replace `path` atomically (temporary file, fsync, rename, fsync of the directory): a kill
    at any moment leaves the previous root or this one, never a part. Its mtime is `as_of`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == len(data) and read_regular_file(path, len(data)) == data:
            os.utime(path, (as_of, as_of))
            return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.utime(tmp, (as_of, as_of))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a daemon thread: work in flight (a refresh, a PolicyService.Test
    candidate) must not hold up shutdown (asyncio.to_thread's executor is joined at exit), nor a
    worker of that executor. Cancelling abandons the thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=work, name="imaged-trust-refresh", daemon=True).start()
    return await future


class TrustRoots:
    """The trust root in use and its refreshes (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        fetch: Callable[[TufSource, pathlib.Path, float, pathlib.Path | None], bytes] = fetch_trusted_root,
        on_refresh: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = rng
        self._fetch = fetch
        self._on_refresh = on_refresh
        self._state: TrustState | None = None
        self._loaded = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.attempts = 0
        self.failures = 0  # of the current streak
        self.last_error: str | None = None

    @classmethod
    def offline(cls, config: VerificationConfig) -> TrustRoots:
        """No state directory and no refresh: `trustedRoot`, else the embedded root."""
        return cls(Settings.from_config(config, None))

    @property
    def directory(self) -> pathlib.Path | None:
        s = self.settings
        if s.tuf is None or s.state_dir is None:
            return None
        return s.state_dir / "trust" / s.tuf.key

    @property
    def saved_path(self) -> pathlib.Path | None:
        d = self.directory
        return d / SAVED_NAME if d is not None else None

    @property
    def url(self) -> str | None:
        return self.settings.tuf.url if self.settings.tuf is not None else None

    # -- the root in use -----------------------------------------------------------------------

    def current(self) -> TrustState | None:
        """The root in use, loaded at first call; None while a TUF-only source has none yet.

        Raises TrustRootError in file mode when the file is unusable (there is nothing else)."""
        if not self._loaded:
            self._state = self._initial()
            self._loaded = True
        return self._state

    def _initial(self) -> TrustState | None:
        s = self.settings
        if s.tuf is None:
            assert s.file is not None
            root = load_trust_root_file(s.file)
            return TrustState(root, Source.FILE, _mtime(pathlib.Path(s.file)))
        saved = self._load_saved()
        if saved is not None:
            return saved
        if s.tuf.url == PUBLIC_GOOD_TUF_URL:
            return TrustState(embedded_public_good(), Source.EMBEDDED, embedded_public_good_mtime())
        if s.file is not None:
            try:
                root = load_trust_root_file(s.file)
            except TrustRootError as e:
                log.warning("trustedRoot unusable until a TUF refresh from %s succeeds: %s", s.tuf.url, e)
            else:
                return TrustState(root, Source.FILE, _mtime(pathlib.Path(s.file)))
        return None

    def _load_saved(self) -> TrustState | None:
        path, d = self.saved_path, self.directory
        if path is None or d is None:
            return None
        self._remove_leftovers(d)
        as_of = _mtime(path)
        if as_of is None:
            return None
        try:
            root = load_trust_root_file(path)
        except TrustRootError as e:
            log.warning("ignoring the saved trust root: %s", e)
            return None
        root = dataclasses.replace(root, source=f"{path} (saved from {self.url})")
        log.info("using the trust root saved at %s (%s)", _minute(as_of), path)
        return TrustState(root, Source.DISK, as_of)

    def _remove_leftovers(self, d: pathlib.Path) -> None:
        """Temporary files of a refresh killed midway (the saved root itself is never partial).

        A reload builds a new manager on the same directory while the previous one may still be
        refreshing into it, so files named with this process's id are left alone unless older
        than any refresh can last (the id of a process before a reboot may come back)."""
        s = self.settings
        before = self._clock() - (2 * s.timeout + FETCH_GRACE)
        ours = str(os.getpid())

        def leftover(p: pathlib.Path, prefix: str) -> bool:
            if p.name[len(prefix) :].split(".", 1)[0].split("-", 1)[0] != ours:
                return True  # another process's: it is gone (one imaged per state directory)
            try:
                return p.stat().st_mtime < before and all(
                    f.stat().st_mtime < before for f in (p.iterdir() if p.is_dir() else ())
                )
            except OSError:
                return False

        with contextlib.suppress(OSError):
            for p in d.glob(f".{SAVED_NAME}.*"):
                if leftover(p, f".{SAVED_NAME}."):
                    p.unlink(missing_ok=True)
            for p in d.glob(f"{DOWNLOAD_PREFIX}*"):
                if leftover(p, DOWNLOAD_PREFIX):
                    for f in p.iterdir():
                        f.unlink(missing_ok=True)
                    p.rmdir()

    # -- refreshing ---------------------------------------------------------------------------

    @property
    def refreshes(self) -> bool:
        return self.settings.refresh

    async def refresh(self, *, only_if_never_tried: bool = False) -> str:
        """One refresh now: "updated", "unchanged", "failed" (or "off"). Never raises."""
        s, d, saved = self.settings, self.directory, self.saved_path
        if not s.refresh or s.tuf is None or d is None or saved is None:
            return "off"
        source = s.tuf
        async with self._lock:
            if only_if_never_tried and self.attempts:
                return "skipped"
            self.attempts += 1
            try:
                current = self.current()
            except TrustRootError:
                current = None

            def fetch() -> bytes:
                # Waited for at most one refresh's time: a refresh that never ends (it should not:
                # the fetcher's deadline covers it) must not stop every later one.
                if not _FETCH_LOCK.acquire(timeout=s.timeout):
                    raise RefreshError(
                        f"another trust root refresh is still running after {s.timeout:g}s (tuf.timeout)"
                    )
                try:
                    return self._fetch(source, d, s.timeout, saved if saved.exists() else None)
                finally:
                    _FETCH_LOCK.release()

            try:
                data = await asyncio.wait_for(in_daemon_thread(fetch), 2 * s.timeout + FETCH_GRACE)
                root = parse_trust_root(data, f"{source.url} (TUF)")
            except TimeoutError:
                return self._failed(f"the refresh did not end within {2 * s.timeout + FETCH_GRACE:g}s")
            except (RefreshError, TrustRootError) as e:
                return self._failed(str(e))
            except Exception as e:  # a refresh must never take the daemon down
                log.debug("trust root refresh crashed", exc_info=True)
                return self._failed(f"{type(e).__name__}: {describe(e)}")
            now = self._clock()
            changed = current is None or current.root.fingerprint != root.fingerprint
            if not changed and current is not None and current.root.source == root.source:
                root = current.root  # the same object: the compiled policy stays as it is
            try:
                await in_daemon_thread(lambda: save_root(saved, data, now))
            except OSError as e:
                log.warning("trust root refreshed but not saved to %s: %s", saved, e)
            self._state, self._loaded = TrustState(root, Source.REFRESHED, now), True
            if self.failures:
                log.info("trust root refresh from %s works again (%d failed)", source.url, self.failures)
            if changed:
                log.info(
                    "trust root updated from %s: %s (was %s)",
                    source.url,
                    root.fingerprint,
                    f"{current.source} {current.root.fingerprint}" if current else "none",
                )
            self.failures, self.last_error = 0, None
            outcome = "updated" if changed else "unchanged"
            if self._on_refresh is not None:
                self._on_refresh(outcome)
            return outcome

    def _failed(self, reason: str) -> str:
        self.failures += 1
        self.last_error = reason
        state = self._state
        keeping = f"keeping the {state.describe()} root" if state is not None else "no trust root yet"
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(
            level,
            "trust root refresh from %s failed (%s; verification is not affected otherwise; "
            "retried in the background, logged again once it works): %s",
            self.url,
            keeping,
            reason,
        )
        if self._on_refresh is not None:
            self._on_refresh("failed")
        return "failed"

    def request_refresh(self) -> None:
        """SIGHUP: refresh now (in the background loop)."""
        self._wake.set()

    async def first_root(self) -> TrustState | None:
        """The root in use; when there is none yet and no refresh was tried, one is tried now
        (a private repository's first start), else None at once (no refresh per request)."""
        state = self.current()
        if state is None and self.refreshes and not self.attempts:
            await self.refresh(only_if_never_tried=True)
            state = self.current()
        return state

    def _first_delay(self) -> float:
        try:
            state = self.current()
        except TrustRootError:
            state = None
        interval = self.settings.interval
        if state is not None and state.source is Source.DISK and state.as_of is not None:
            remaining = interval - (self._clock() - state.as_of)
            if remaining > 0:
                return remaining * (0.9 + 0.2 * self._rng())
        return self._rng() * min(START_SPREAD, interval / 10)

    def _next_delay(self, outcome: str) -> float:
        interval = self.settings.interval
        base = interval
        if outcome == "failed":
            base = min(interval, RETRY_DELAY * 2 ** min(self.failures - 1, 20))
        return base * (0.9 + 0.2 * self._rng())

    async def run(self, needed: Callable[[], bool]) -> None:
        """Refresh at start, on schedule and on request, while `needed()` (a keyless rule exists)."""
        if not self.refreshes:
            return
        delay = self._first_delay()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            if not needed():
                delay = self.settings.interval
                continue
            delay = self._next_delay(await self.refresh())

    # -- visibility ---------------------------------------------------------------------------

    def status(self) -> tuple[str, float | None, bool] | None:
        """(source, age in seconds, stale) of the root in use, if one is loaded."""
        state = self._state
        if state is None:
            return None
        return str(state.source), state.age(self._clock()), self.stale() is not None

    def stale(self) -> str | None:
        """Why the root in use is too old to be trusted to be current, or None."""
        s = self.settings
        if not s.refresh or s.max_age <= 0:
            return None
        state = self._state
        if state is None:
            if not self.attempts:
                return None
            return f"no trust root: no refresh from {self.url} has succeeded ({self.last_error})"
        age = state.age(self._clock())
        if age is None or age <= s.max_age:
            return None
        detail = (
            f"trust root ({state.describe()}) is {_human(age)} old, more than tuf.maxAge {_human(s.max_age)}"
        )
        if self.last_error:
            detail += f"; last refresh error: {self.last_error}"
        return detail


def _mtime(path: pathlib.Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds:.0f}s"
