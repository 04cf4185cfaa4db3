"""A small Docker token server (the `auth: token` flow of distribution) for tests.

Runs a threaded HTTP server on 127.0.0.1 (its own thread, so it serves whatever event loop the test
uses). `GET /token?service=..&scope=repository:NAME:pull,push` with Basic credentials of a known user
returns `{"token", "access_token", "expires_in", "issued_at"}`: a JWT signed with an EC P-256 key whose
self-signed certificate the registry trusts (`rootcertbundle`). Anonymous requests get a token with no
access (the registry then answers 401, as a real one does). Wrong credentials get 401.

`POST /token` is the OAuth2 form containerd sends when it has credentials: `grant_type=password` with
`username`/`password`, or `grant_type=refresh_token` with a token of `refresh_tokens` (an identity token,
mapped to its user); it returns `{"access_token", "expires_in", "issued_at"}`, or 401.

`requests` lists (scope, user or None) of every token request, so tests can check caching.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import pathlib
import secrets
import ssl
import threading
import time
import urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id distribution's token verifier looks up (libtrust's format)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


class TokenServer:
    """Issues registry tokens; `users` maps user names to passwords (shared with the Registry)."""

    def __init__(
        self,
        users: dict[str, str],
        *,
        service: str,
        expires_in: int = 300,
        tls: tuple[pathlib.Path, pathlib.Path] | None = None,
    ) -> None:
        """`tls`: (certificate, key) to serve HTTPS, as a registry with a private CA would."""
        self.users = users
        self.tls = tls
        self.service = service
        self.issuer = "imaged-test-token-issuer"
        self.expires_in = expires_in
        self.requests: list[tuple[str, str | None]] = []
        # Identity (refresh) tokens accepted by the OAuth2 POST, and the user each stands for.
        self.refresh_tokens: dict[str, str] = {}
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = libtrust_key_id(self._key.public_key())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imaged test token signer")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def realm(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/token"

    def write_cert(self, path: pathlib.Path) -> pathlib.Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, user: str | None, scopes: list[str]) -> str:
        access = []
        if user is not None:
            for scope in scopes:
                parts = scope.split(":")
                if len(parts) >= 3 and parts[0] == "repository":
                    name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
                    access.append({"type": "repository", "name": name, "actions": actions})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, user): ok is False for wrong credentials; user None for anonymous."""
        if not header:
            return True, None
        if not header.startswith("Basic "):
            return False, None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False, None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return True, user
        return False, None

    def start(self) -> None:
        if self._httpd is not None:
            return
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                query = urllib.parse.parse_qs(url.query)
                scopes = [s for v in query.get("scope", []) for s in v.split(" ") if s]
                ok, user = server._authenticate(self.headers.get("Authorization"))
                server.requests.append((" ".join(scopes), user))
                if not ok:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_response(401)
                else:
                    token = server.issue(user, scopes)
                    body = json.dumps(
                        {
                            "token": token,
                            "access_token": token,
                            "expires_in": server.expires_in,
                            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                        }
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if urllib.parse.urlsplit(self.path).path != "/token":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                scopes = [s for s in form.get("scope", "").split(" ") if s]
                user: str | None = None
                if form.get("grant_type") == "password":
                    name, password = form.get("username", ""), form.get("password", "")
                    if name in server.users and secrets.compare_digest(server.users[name], password):
                        user = name
                elif form.get("grant_type") == "refresh_token":
                    user = server.refresh_tokens.get(form.get("refresh_token", ""))
                server.requests.append((" ".join(scopes), user))
                if user is None:
                    body = b'{"error":"invalid_grant"}'
                    self.send_response(401)
                else:
                    token = server.issue(user, scopes)
                    body = json.dumps(
                        {
                            "access_token": token,
                            "expires_in": server.expires_in,
                            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                        }
                    ).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        port = self.port
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
