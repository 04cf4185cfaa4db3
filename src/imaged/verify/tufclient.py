"""One TUF refresh of a Sigstore `trusted_root.json`, done by python-tuf's `ngclient.Updater`.

python-tuf runs the TUF client workflow: the chain of root rotations from the initial root,
signature thresholds, expiry, version rollback against the metadata it keeps in
`<dir>/metadata`, and the target's length and hashes. What is ours: the initial root (the
public-good one sigstore-python ships, or the configured one), the fetchers, and a size bound on
the target. Over http(s), a fetcher that reaches hosts as the rest of imaged does (proxies from the
environment, loopback direct; the system CAs plus `tuf.caFile`, a client certificate if given)
within one deadline; for `file://` (an air-gapped copy of a repository), one that reads regular
files under that directory only. Both only transport bytes: python-tuf checks every one of them
the same way. The result is the verified bytes. Blocking: run it in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import urllib3
import urllib3.connection
from tuf.api import exceptions
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from imaged import __version__
from imaged.registry.proxy import ProxyRules
from imaged.verify.files import read_regular_file
from imaged.verify.trust import MAX_TRUST_ROOT_SIZE

TARGET = "trusted_root.json"
# A download in progress: `<prefix><pid>-<random>/` under the repository's state directory.
DOWNLOAD_PREFIX = ".download-"
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 30.0
# A PEM bundle of CA certificates (a system bundle is about 200 KiB).
MAX_CA_FILE = 4 * 1024 * 1024


class RefreshError(Exception):
    """A refresh that produced no verified root; the message says why."""


@dataclass(frozen=True)
class TufSource:
    """A TUF repository and the initial root.json its metadata must chain to; for https, how
    the connection is authenticated (paths, read at each refresh: a renewed file is picked up)."""

    url: str
    bootstrap: bytes
    ca_file: str | None = None  # added to the system CAs
    client_cert: tuple[str, str] | None = None  # (certificate, key) PEM files

    @property
    def anchor(self) -> tuple[str, bytes]:
        """What names the root: the repository and its initial root (not how it is reached)."""
        return self.url, self.bootstrap

    @property
    def is_file(self) -> bool:
        return self.url.startswith("file://")

    @property
    def key(self) -> str:
        """A directory name: readable host, and a hash of the URL and initial root, so that
        state fetched under one anchor is never used under another."""
        host = "file" if self.is_file else urllib.parse.urlsplit(self.url).netloc.replace(":", "_") or "tuf"
        digest = hashlib.sha256(self.url.encode() + b"\0" + self.bootstrap).hexdigest()[:16]
        return f"{host}-{digest}"


class _Watched(threading.local):
    """The fetcher whose request this thread is making: its connections' sockets are registered
    with it as they are made (urllib3 connects inside `request`, in the calling thread)."""

    fetcher: BoundedFetcher | None = None


_WATCHED = _Watched()


def _register(sock: socket.socket) -> None:
    fetcher = _WATCHED.fetcher
    if fetcher is not None:
        fetcher.watch(sock)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class BoundedFetcher(FetcherInterface):
    """urllib3 GETs under one deadline for the whole refresh; python-tuf bounds each length.

    urllib3's timeouts are per socket operation: a server sending a byte every few seconds, in the
    headers or the body, never trips them. So a timer shuts every socket of this fetcher down at
    the deadline (a blocked read then returns at once), and a request is never retried (each retry
    would have its own timeouts); redirects are followed, up to 5, never from https to http
    (see `_redirect`)."""

    def __init__(
        self,
        deadline: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        ca_file: str | None = None,
        client_cert: tuple[str, str] | None = None,
    ) -> None:
        self._deadline = deadline
        self._clock = clock
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._ssl = tls_context(ca_file, client_cert)
        self._proxies = ProxyRules.from_environment()
        self._headers = {"User-Agent": f"imaged/{__version__}"}
        self._pools: dict[str, urllib3.PoolManager] = {}
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer: threading.Timer | None = None

    def _pool(self, url: str) -> urllib3.PoolManager:
        proxy = self._proxies.for_url(url)
        key = str(proxy) if proxy is not None else ""
        pool = self._pools.get(key)
        if pool is None:
            if proxy is None:
                pool = urllib3.PoolManager(headers=self._headers, ssl_context=self._ssl)
            else:
                pool = urllib3.ProxyManager(
                    str(proxy.url), headers=self._headers, proxy_headers=proxy.headers, ssl_context=self._ssl
                )
            pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
            self._pools[key] = pool
        return pool

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        with self._lock:
            if not self._expired:
                self._sockets.append(sock)
                return
        _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)

    def _late(self) -> exceptions.SlowRetrievalError:
        return exceptions.SlowRetrievalError("the refresh timed out (its deadline covers all downloads)")

    def _remaining(self) -> float:
        left = self._deadline - self._clock()
        if left <= 0 or self._expired:
            raise self._late()
        return left

    def _fetch(self, url: str) -> Iterator[bytes]:
        left = self._remaining()
        if self._timer is None:
            self._timer = threading.Timer(left, self._expire)
            self._timer.daemon = True
            self._timer.start()
        timeout = urllib3.Timeout(connect=min(left, CONNECT_TIMEOUT), read=min(left, READ_TIMEOUT))
        retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=False)
        asked = url
        for _ in range(MAX_REDIRECTS + 1):
            _WATCHED.fetcher = self
            try:
                response = self._pool(url).request(
                    "GET", url, preload_content=False, timeout=timeout, retries=retries, redirect=False
                )
            except urllib3.exceptions.HTTPError as e:
                if self._expired:
                    raise self._late() from None
                raise exceptions.DownloadError(f"{url}: {_cause(e)}{self._tls_hint(e)}") from None
            finally:
                _WATCHED.fetcher = None
            location = response.get_redirect_location()
            if not location:
                break
            response.release_conn()
            url = self._redirect(asked, url, location)
        else:
            raise exceptions.DownloadError(f"{asked}: more than {MAX_REDIRECTS} redirects")
        if response.status >= 400:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(url, response)

    def _redirect(self, asked: str, url: str, location: str) -> str:
        """Where a redirect leads, if it keeps what the settings chose: never from https to
        plain http (the CA and client certificate would silently stop applying), and with a
        client certificate never to another host (it would be presented there)."""
        target = urllib.parse.urljoin(url, location)
        was, now = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
        if now.scheme not in ("http", "https") or (was.scheme == "https" and now.scheme != "https"):
            raise exceptions.DownloadError(f"{asked}: redirected from {was.scheme} to {now.scheme}: refused")
        if self._client_cert is not None and (now.hostname, now.port) != (was.hostname, was.port):
            raise exceptions.DownloadError(
                f"{asked}: redirected to another host ({now.hostname}) while verification.tuf.certFile "
                "is set: refused (the client certificate would be presented there)"
            )
        return target

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            for chunk in response.stream(CHUNK):
                self._remaining()
                yield chunk
        except urllib3.exceptions.HTTPError as e:
            if self._expired:
                raise self._late() from None
            raise exceptions.DownloadError(f"{url}: {_cause(e)}") from None
        finally:
            response.release_conn()
        self._remaining()  # a body cut short by the deadline may look complete to urllib3

    def _tls_hint(self, e: BaseException) -> str:
        """Which setting fixes a failed TLS handshake: the CA, or the client certificate."""
        text = _cause(e)
        if "CERTIFICATE_VERIFY_FAILED" in text and "mismatch" in text:
            return " (the server's certificate does not name the host of verification.tuf.url)"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            if self._ca_file is None:
                return (
                    " (the server's certificate is not issued by a CA of this system: set "
                    "verification.tuf.caFile to the PEM file of the CA that issued it)"
                )
            return (
                f" (the server's certificate is issued neither by verification.tuf.caFile "
                f"{self._ca_file} nor by a CA of this system)"
            )
        reason = getattr(e, "reason", e)
        tls_failed = isinstance(reason, urllib3.exceptions.SSLError | ssl.SSLError)
        if self._client_cert is None and (tls_failed or "CERTIFICATE_REQUIRED" in text):
            # Under TLS 1.3 a server refusing us may be seen as its alert or as a bare EOF.
            return " (if the server wants a client certificate: verification.tuf.certFile and keyFile)"
        return ""

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for pool in self._pools.values():
            pool.clear()


def tls_context(ca_file: str | None, client_cert: tuple[str, str] | None) -> ssl.SSLContext | None:
    """The system CAs plus `ca_file`, and a client certificate; None when neither is given
    (urllib3's own context, which uses the system CAs). Files are checked to be regular before
    OpenSSL opens them (a FIFO would block the refresh). Raises RefreshError naming the setting."""
    if ca_file is None and client_cert is None:
        return None
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            pem = read_regular_file(ca_file, MAX_CA_FILE)
            if len(pem) > MAX_CA_FILE:
                raise RefreshError(f"verification.tuf.caFile {ca_file}: larger than {MAX_CA_FILE} bytes")
            ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        except OSError as e:  # ssl.SSLError included
            raise RefreshError(f"verification.tuf.caFile {ca_file}: {_os_reason(e)}") from None
    if client_cert is not None:
        cert, key = client_cert
        for setting, path in (("certFile", cert), ("keyFile", key)):
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError as e:
                raise RefreshError(f"verification.tuf.{setting} {path}: {e.strerror}") from None
            if not regular:
                raise RefreshError(f"verification.tuf.{setting} {path}: not a regular file")
        try:
            # A password-protected key is refused, never prompted for on a terminal.
            ctx.load_cert_chain(cert, key, password=_no_password)
        except OSError as e:
            raise RefreshError(
                f"verification.tuf.certFile {cert} with keyFile {key}: {_os_reason(e)}"
            ) from None
    return ctx


def _no_password() -> bytes:
    raise ssl.SSLError("the key is encrypted (a password-protected keyFile is not supported)")


def _os_reason(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):
        return f"not usable PEM ({getattr(e, 'reason', None) or e})"
    return e.strerror or str(e)


class FileFetcher(FetcherInterface):
    """A TUF repository copied onto the node (`tuf.url: file:///path`), in the layout it is
    served over HTTP: `N.root.json`, `timestamp.json`, ... in `path`, targets in `path/targets`.

    Only transport, as over HTTP: python-tuf checks what is read and bounds each length (it stops
    reading past it). Regular files under `path` only (a FIFO or device is refused, never waited
    on; `..` is refused), read in chunks under the refresh's deadline. A missing file is a 404 to
    python-tuf, which is how it learns that no newer root exists."""

    def __init__(
        self, base_url: str, deadline: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._prefix = base_url.rstrip("/") + "/"
        self._base = pathlib.Path(urllib.parse.unquote(urllib.parse.urlsplit(base_url).path))
        self._deadline = deadline
        self._clock = clock

    def _remaining(self) -> None:
        if self._clock() >= self._deadline:
            raise exceptions.SlowRetrievalError("the refresh timed out (its deadline covers all reads)")

    def _path(self, url: str) -> pathlib.Path:
        if not url.startswith(self._prefix):
            raise exceptions.DownloadError(f"{url}: outside the repository {self._prefix}")
        parts = urllib.parse.unquote(url[len(self._prefix) :]).split("/")
        if any(p in ("", ".", "..") for p in parts) or any("\0" in p for p in parts):
            raise exceptions.DownloadError(f"{url}: not a plain path inside the repository")
        return self._base.joinpath(*parts)

    def _fetch(self, url: str) -> Iterator[bytes]:
        self._remaining()
        path = self._path(url)
        if not self._base.is_dir():
            raise exceptions.DownloadError(
                f"verification.tuf.url: {self._base} is not a directory (a copy of the TUF "
                "repository, timestamp.json in it)"
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise exceptions.DownloadHTTPError(f"{path}: not found", 404) from None
            raise exceptions.DownloadError(f"{path}: {e.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise exceptions.DownloadError(f"{path}: not a regular file")
            # What was opened, symlinks resolved, must lie inside the directory (checked on
            # the open file, so a link swapped after a look cannot lead elsewhere).
            opened = pathlib.Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not opened.is_relative_to(self._base.resolve()):
                raise exceptions.DownloadError(f"{path}: leads outside the repository (to {opened})")
        except BaseException:
            os.close(fd)
            raise
        return self._chunks(fd, path)

    def _chunks(self, fd: int, path: pathlib.Path) -> Iterator[bytes]:
        try:
            while True:
                self._remaining()
                try:
                    chunk = os.read(fd, CHUNK)
                except OSError as e:
                    raise exceptions.DownloadError(f"{path}: {e.strerror}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _cause(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e)


def fetch_trusted_root(
    source: TufSource, directory: pathlib.Path, timeout: float, saved: pathlib.Path | None = None
) -> bytes:
    """Refresh the TUF metadata kept in `directory/metadata` and return the verified target.

    `saved` is our copy of the last good root: when the repository still names those bytes,
    they are returned without downloading them again. Raises RefreshError.
    """
    metadata = directory / "metadata"
    deadline = time.monotonic() + timeout
    fetcher: BoundedFetcher | FileFetcher | None = None
    try:
        if source.is_file:
            fetcher = FileFetcher(source.url, deadline)
        else:
            fetcher = BoundedFetcher(deadline, ca_file=source.ca_file, client_cert=source.client_cert)
        metadata.mkdir(parents=True, exist_ok=True)
        updater = Updater(
            metadata_dir=str(metadata),
            metadata_base_url=source.url + "/",
            target_base_url=source.url + "/targets/",
            fetcher=fetcher,
            config=UpdaterConfig(app_user_agent=f"imaged/{__version__}"),
            bootstrap=source.bootstrap,
        )
        updater.refresh()
        info = updater.get_targetinfo(TARGET)
        if info is None:
            raise RefreshError(f"{source.url} publishes no {TARGET}")
        if info.length > MAX_TRUST_ROOT_SIZE:
            raise RefreshError(
                f"{source.url}: {TARGET} is {info.length} bytes, more than {MAX_TRUST_ROOT_SIZE}"
            )
        if saved is not None and updater.find_cached_target(info, str(saved)) is not None:
            return read_regular_file(saved, MAX_TRUST_ROOT_SIZE)
        with tempfile.TemporaryDirectory(prefix=f"{DOWNLOAD_PREFIX}{os.getpid()}-", dir=directory) as tmp:
            path = updater.download_target(info, filepath=str(pathlib.Path(tmp) / TARGET))
            return read_regular_file(path, MAX_TRUST_ROOT_SIZE)
    except RefreshError:
        raise
    except Exception as e:  # python-tuf's RepositoryError and DownloadError, OSError, ValueError
        raise RefreshError(f"{type(e).__name__}: {describe(e)}") from None
    finally:
        if isinstance(fetcher, BoundedFetcher):
            fetcher.close()


def describe(e: BaseException) -> str:
    """An exception and the causes python-tuf chains to it, in one line."""
    parts: list[str] = []
    seen: BaseException | None = e
    while seen is not None and len(parts) < 4:
        text = str(seen).strip()
        if text and text not in parts:
            parts.append(text)
        seen = seen.__cause__
    return ": ".join(parts) or type(e).__name__
