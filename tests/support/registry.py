"""A real `docker-registry` (distribution 2.8) on 127.0.0.1 for tests: plain, htpasswd, token auth, TLS.

Usage::

    with Registry() as reg:                       # plain HTTP on a free port
        reg.host                                  # "127.0.0.1:PORT"
        reg.url                                   # "http://127.0.0.1:PORT"
        push_test_image(reg, "test/app", "v1")    # from tests.support.images
        reg.blob_get_count(digest)                # GETs of that blob seen so far (access log)

    Registry(htpasswd={"alice": "secret"})        # Basic auth (bcrypt htpasswd, made with libcrypt)
    Registry(token_auth=True, htpasswd={...})     # Bearer tokens from tests.support.tokenserver
    Registry(tls=True)                            # HTTPS with a private CA: reg.ca_pem_path
    Registry(proxy_of=origin.url)                 # a pull-through cache of `origin` (proxy mode)
    Registry(program=DISTRIBUTION_V3, ...)        # distribution v3 (tools/peers.py) instead of 2.8

Counting requests: the registry's own access log (one combined-log line per request, on its stdout) is
parsed; `requests()` gives every (method, path, status) seen so far, `blob_get_count()` counts GETs of
one blob in any repository. Nothing sits between the client and the registry.

`program`: Debian's `docker-registry` (distribution 2.8, the default) or `DISTRIBUTION_V3`, the
`registry` of distribution v3 built from its Go module; both read the same configuration file here and
write the same access log. As a pull-through cache they differ: 2.8 fetches a blob it lacks from the
origin twice (once to keep, once to stream to the client), v3 once (README "Scaling past one node").

`stop()` stops the registry (and the token server); `start()` starts it again on the same port with the
same data, so a test can simulate an outage. `close()` (or leaving the `with`) also removes the data.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEBIAN_REGISTRY = "docker-registry"
DISTRIBUTION_V3 = "distribution-v3"
_ACCESS_RE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d{3}) ')


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file, made by the system libcrypt (no bcrypt package needed).

    Cost 4 (the minimum Go's bcrypt accepts) keeps registry logins fast in tests.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)
        hashed = crypt.crypt(password, salt)
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("libcrypt did not produce a bcrypt hash")
    return hashed


class TestCA:
    """A private CA and certificates signed by it (EC P-256), written as PEM files under `dir`."""

    __test__ = False

    def __init__(self, dir: pathlib.Path, name: str = "imaged test CA") -> None:
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = dir / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = True) -> tuple[pathlib.Path, pathlib.Path]:
        """A leaf certificate for 127.0.0.1, ::1 and localhost; returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


class Registry:
    """A `docker-registry serve` on 127.0.0.1 with a free port and its own temporary directory."""

    def __init__(
        self,
        *,
        htpasswd: dict[str, str] | None = None,
        tls: bool = False,
        token_auth: bool = False,
        token_tls: bool | None = None,
        proxy_of: str | None = None,
        program: str = DEBIAN_REGISTRY,
        start: bool = True,
    ) -> None:
        """`token_tls`: whether the token server is HTTPS (default: as the registry).

        `proxy_of`: the URL of a registry this one is a pull-through cache of (`proxy.remoteurl`):
        it fetches what it lacks from there, keeps it, and refuses pushes.
        """
        from tests.support.tokenserver import TokenServer

        if program == DEBIAN_REGISTRY:
            self.argv = ["docker-registry", "serve"]
        elif program == DISTRIBUTION_V3:
            from tests.support import peers  # (bench/ imports this module without pytest's peers)

            self.argv = [peers.program("distribution", "registry"), "serve"]
        else:
            raise ValueError(f"unknown registry program {program!r}")
        self.program = program
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="ireg-", dir="/tmp"))
        self.users = dict(htpasswd or {})
        self.tls = tls
        self.token_auth = token_auth
        self.proxy_of = proxy_of
        self.port = free_port()
        self.log_path = self.dir / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca: TestCA | None = None
        self.ca_pem_path: str | None = None
        self.token_server: TokenServer | None = None
        self._cert: tuple[pathlib.Path, pathlib.Path] | None = None
        if tls:
            self.ca = TestCA(self.dir)
            self.ca_pem_path = str(self.ca.cert_path)
            self._cert = self.ca.issue("registry")
        if token_auth:
            # With TLS the token server is HTTPS too, under the same private CA (as Harbor serves it).
            cert = self._cert if token_tls is None or token_tls else None
            self.token_server = TokenServer(self.users, service="imaged-test-registry", tls=cert)
        elif htpasswd is not None:
            (self.dir / "htpasswd").write_text(
                "".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items())
            )
        if start:
            self.start()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    # -- lifecycle --------------------------------------------------------------------------------

    def _write_config(self) -> pathlib.Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.dir / 'data'}}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: imaged-test-secret",
        ]
        if self._cert is not None:
            lines += ["  tls:", f"    certificate: {self._cert[0]}", f"    key: {self._cert[1]}"]
        if self.token_server is not None:
            self.token_server.start()
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token_server.realm}",
                f"    service: {self.token_server.service}",
                f"    issuer: {self.token_server.issuer}",
                f"    rootcertbundle: {self.token_server.write_cert(self.dir / 'token-root.pem')}",
            ]
        elif (self.dir / "htpasswd").exists():
            lines += ["auth:", "  htpasswd:", "    realm: imaged-test", f"    path: {self.dir / 'htpasswd'}"]
        if self.proxy_of is not None:
            lines += ["proxy:", f"  remoteurl: {self.proxy_of}"]
        path = self.dir / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart, same port and data) and wait until the port answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(3):
            config = self._write_config()
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(
                    [*self.argv, str(config)],
                    # v3 exports traces through OpenTelemetry's OTLP exporter unless told not to.
                    env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if wait_port("127.0.0.1", self.port, 0.2):
                    return
            self._kill()
            log = self.log_path.read_text(errors="replace")[-2000:]
            if "address already in use" in log and attempt < 2:
                self.port = free_port()  # lost the race for the port: pick another
                continue
            raise RuntimeError(f"{self.program} did not start on {self.host}:\n{log}")

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the registry process (data is kept; `start()` brings it back on the same port)."""
        self._kill()
        if self.token_server is not None:
            self.token_server.stop()

    def close(self) -> None:
        """Stop everything and remove the temporary directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- observing --------------------------------------------------------------------------------

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path with query, status) of every request in the access log so far."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [(m.group(1), m.group(2), int(m.group(3))) for m in _ACCESS_RE.finditer(text)]

    def blob_get_count(self, digest: str) -> int:
        """How many GET requests for blob `digest` (any repository, any status) the registry saw."""
        suffix = f"/blobs/{digest}"
        return sum(1 for m, p, _ in self.requests() if m == "GET" and p.split("?")[0].endswith(suffix))

    # -- tools ------------------------------------------------------------------------------------

    def credentials(self) -> tuple[str, str] | None:
        """The first configured user, for pushing."""
        return next(iter(self.users.items()), None)

    def skopeo_dest_args(self) -> list[str]:
        """skopeo flags to push here (credentials, TLS)."""
        args: list[str] = []
        creds = self.credentials()
        if creds:
            args.append(f"--dest-creds={creds[0]}:{creds[1]}")
        if self.tls and self.ca is not None:
            certs = self.dir / "skopeo-certs"
            certs.mkdir(exist_ok=True)
            shutil.copy(self.ca.cert_path, certs / "ca.crt")
            args.append(f"--dest-cert-dir={certs}")
        else:
            args.append("--dest-tls-verify=false")
        return args

    def basic_auth_header(self) -> str | None:
        creds = self.credentials()
        if not creds:
            return None
        return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
