"""A TUF repository like Sigstore's, built with python-tuf's metadata API and served over loopback.

Four top-level roles, each with its own ECDSA key, consistent snapshots (`N.root.json`,
`N.snapshot.json`, `N.targets.json`, `targets/<sha256>.<name>`) and `timestamp.json`, publishing
`trusted_root.json` as Sigstore's repository does. Besides honest publication, it can misbehave
the ways a client must refuse: serve an older timestamp (rollback), an expired one, a new root
signed by keys the client does not trust, or stall halfway through a target (to kill a client
mid-refresh). Typical use::

    repo = TufRepository()
    repo.publish(ps.trusted_root_json())
    repo.write_initial_root(tmp / "root.json")     # the client's tuf.root
    ... repo.url ...
    repo.close()

`TufRepository(tls=(cert, key))` serves HTTPS instead (`client_ca=` also asks for a client
certificate issued by that CA); `export(dir)` writes what it serves into a directory, in the
same layout, for a `file://` URL (an air-gapped copy).
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import pathlib
import ssl
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

ROLES = ("root", "targets", "snapshot", "timestamp")
TARGET = "trusted_root.json"


def _expires(days: float = 30) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client refusing our certificate (what some tests want) is no error of the server's.
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            super().handle_error(request, client_address)


class TufRepository:
    def __init__(
        self, *, tls: tuple[pathlib.Path, pathlib.Path] | None = None, client_ca: pathlib.Path | None = None
    ) -> None:
        self.signers: dict[str, Signer] = {role: CryptoSigner.generate_ecdsa() for role in ROLES}
        self.root: Metadata[Root] = Metadata(Root(expires=_expires(365), consistent_snapshot=True))
        for role, signer in self.signers.items():
            self.root.signed.add_key(signer.public_key, role)
        self.targets: Metadata[Targets] = Metadata(Targets(expires=_expires()))
        self.snapshot: Metadata[Snapshot] = Metadata(Snapshot(expires=_expires()))
        self.timestamp: Metadata[Timestamp] = Metadata(Timestamp(expires=_expires()))
        self.files: dict[str, bytes] = {}  # URL path (no leading /) -> body
        self.requests: list[str] = []
        self.initial_root = self._sign_root()
        # Set to make the next target download send half its body, then wait for `release`.
        self.stall_targets = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*tls)
            if client_ca is not None:
                ctx.load_verify_locations(cafile=client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            # The handshake happens in the request's thread: a client that fails it stops nobody.
            self._server.socket = ctx.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- serving ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        repo = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                repo.requests.append(path)
                body = repo.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path.startswith("targets/") and repo.stall_targets.is_set():
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    repo.stalled.set()
                    repo.release.wait(120)
                    self.close_connection = True  # short: the client sees a truncated body
                    return
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- publishing ---------------------------------------------------------------------------

    def _bytes(self, md: Metadata[Any]) -> bytes:
        return md.to_bytes(JSONSerializer(compact=False))

    def _sign_root(self, *signers: Signer) -> bytes:
        self.root.signatures.clear()
        for signer in signers or (self.signers["root"],):
            self.root.sign(signer, append=True)
        data = self._bytes(self.root)
        self.files[f"{self.root.signed.version}.root.json"] = data
        return data

    def export(self, directory: pathlib.Path) -> str:
        """Write every file served (metadata at the top, `targets/`) into `directory`, as an
        operator copies a repository onto an air-gapped node; returns its `file://` URL."""
        for name, body in self.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        return directory.resolve().as_uri()

    def write_initial_root(self, path: pathlib.Path) -> pathlib.Path:
        """Version 1 of root.json: what a client is configured with (`tuf.root`)."""
        path.write_bytes(self.initial_root)
        return path

    def publish(self, data: bytes, name: str = TARGET, *, timestamp_expires: datetime | None = None) -> None:
        """A new target version: targets, snapshot and timestamp each get a new version."""
        digest = hashlib.sha256(data).hexdigest()
        self.files[f"targets/{digest}.{name}"] = data
        self.targets.signed.targets[name] = TargetFile.from_data(name, data, ["sha256"])
        self.targets.signed.version += 1
        self.targets.sign(self.signers["targets"])
        self.files[f"{self.targets.signed.version}.targets.json"] = self._bytes(self.targets)
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.snapshot.signed.version += 1
        self.snapshot.sign(self.signers["snapshot"])
        self.files[f"{self.snapshot.signed.version}.snapshot.json"] = self._bytes(self.snapshot)
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = timestamp_expires or _expires()
        self.timestamp.sign(self.signers["timestamp"])
        self.files["timestamp.json"] = self._bytes(self.timestamp)

    def timestamp_json(self) -> bytes:
        return self.files["timestamp.json"]

    def serve_timestamp(self, data: bytes) -> None:
        """Serve these timestamp bytes (an older version: a rollback)."""
        self.files["timestamp.json"] = data

    def publish_expired(self, data: bytes) -> None:
        """A correctly signed new version whose timestamp expired an hour ago."""
        self.publish(data, timestamp_expires=(datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0))

    def rotate_root(self, role: str = "timestamp") -> None:
        """An honest rotation of `role`'s key: root N+1 signed by the old and the new root keys."""
        old_root_signer = self.signers["root"]
        new = CryptoSigner.generate_ecdsa()
        self.root.signed.revoke_key(self.signers[role].public_key.keyid, role)
        self.root.signed.add_key(new.public_key, role)
        self.signers[role] = new
        if role == "root":
            self.root.signed.version += 1
            self._sign_root(old_root_signer, new)
        else:
            self.root.signed.version += 1
            self._sign_root()

    def serve_root_signed_by_wrong_keys(self) -> None:
        """Root N+1 naming a new timestamp key, signed only by a key root N does not list; and a
        timestamp signed with that new key. An attacker's mirror: the client must refuse both."""
        rogue = CryptoSigner.generate_ecdsa()
        forged = copy.deepcopy(self.root)
        forged.signed.version += 1
        forged.signed.roles["timestamp"].keyids = [rogue.public_key.keyid]
        forged.signed.keys[rogue.public_key.keyid] = rogue.public_key
        forged.signed.roles["root"].keyids = [rogue.public_key.keyid]
        forged.sign(rogue)
        self.files[f"{forged.signed.version}.root.json"] = self._bytes(forged)
        ts = copy.deepcopy(self.timestamp)
        ts.signed.version += 1
        ts.sign(rogue)
        self.files["timestamp.json"] = self._bytes(ts)

    def wait_request(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while path not in self.requests:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody asked for {path}; asked: {self.requests[-10:]}")
            time.sleep(0.02)
