"""Security: socket permissions hold against another user, and no secret reaches a log line, an
error message, or a host it was not meant for.

The other user is `nobody` (uid/gid 65534) running a real gRPC client under `setpriv`. Secrets are
distinctive strings used as registry passwords (htpasswd and token auth, in the configuration and
per request), plus every bearer token the token server issued; after real operations (successful,
refused, redirected to another host) every daemon log and every error message is searched.
"""

from __future__ import annotations

import base64
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import grpc
import pytest
from aiohttp import web

from imaged.pb.machine import image_pb2
from tests.conftest import REPO
from tests.pull.test_pull import pull
from tests.reliability.faultproxy import Fault, FaultProxy
from tests.reliability.hostile import HostileRegistry
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import SYSTEM, DaemonProcess, run_imaged
from tests.support.registry import Registry
from tests.support.sigstore import StaticKey

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

CLIENT = """
import sys, grpc
from imaged.pb.machine import image_pb2, image_pb2_grpc
from tests.support.daemon import SYSTEM
stub = image_pb2_grpc.ImageServiceStub(grpc.insecure_channel("unix:" + sys.argv[1]))
try:
    if sys.argv[2] == "list":
        list(stub.List(image_pb2.ImageServiceListRequest(containerd=SYSTEM), timeout=10))
    else:
        req = image_pb2.ImageServicePullRequest(containerd=SYSTEM, image_ref="x.invalid/a:b")
        list(stub.Pull(req, timeout=10))
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"""


def as_nobody(socket: str, method: str) -> str:
    assert shutil.which("setpriv"), "setpriv (util-linux) is missing"
    r = subprocess.run(
        [*NOBODY, sys.executable, "-c", CLIENT, socket, method],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture
def socket_dir() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="isec-", dir="/tmp"))
    d.chmod(0o755)  # traversable by anyone: only the sockets' own modes decide
    yield d
    shutil.rmtree(d, ignore_errors=True)


def check_config_fails(path: pathlib.Path, text: str) -> str:
    """Write `text` to `path`, run `imaged --check-config` on it, expect a refusal; its output."""
    path.write_text(text)
    r = run_imaged("--config", str(path), "--check-config")
    assert r.returncode != 0
    return r.stdout + r.stderr


@pytest.mark.parametrize(
    ("admin", "readonly", "admin_for_nobody"),
    [
        ({"mode": "0660"}, {"mode": "0666"}, "denied"),
        ({"mode": "0600", "group": "65534"}, {"mode": "0660", "group": "65534"}, "denied"),
        ({"mode": "0660", "group": "65534"}, {"mode": "0640", "group": "65534"}, "allowed"),
    ],
)
def test_socket_modes_hold_against_another_user(
    containerd: PrivateContainerd,
    socket_dir: pathlib.Path,
    admin: dict,
    readonly: dict,
    admin_for_nobody: str,  # type: ignore[type-arg]
) -> None:
    admin_path, ro_path = str(socket_dir / "admin.sock"), str(socket_dir / "ro.sock")
    d = DaemonProcess(
        containerd.socket,
        {"listen": {"admin": {"path": admin_path, **admin}, "readonly": {"path": ro_path, **readonly}}},
    )
    d.socket = admin_path
    d.start()
    try:
        for path, cfg in ((admin_path, admin), (ro_path, readonly)):
            st = os.stat(path)
            assert st.st_mode & 0o777 == int(cfg["mode"], 8), path
            assert st.st_gid == int(cfg.get("group", os.getgid()))
        # The read-only socket: writable by group 65534 or everyone (0666, 0660) -> served;
        # 0640 has no write bit for the group, and connecting to a unix socket needs write.
        ro_mode = int(readonly["mode"], 8)
        ro_out = as_nobody(ro_path, "list")
        if ro_mode & 0o002 or ro_mode & 0o020:
            assert ro_out == "OK", ro_out
            assert as_nobody(ro_path, "pull").startswith("PERMISSION_DENIED"), "read-only socket serves Pull"
        else:
            assert ro_out.startswith("UNAVAILABLE") and "ermission denied" in ro_out, ro_out
        admin_out = as_nobody(admin_path, "list")
        if admin_for_nobody == "allowed":
            assert admin_out == "OK", admin_out
        else:
            assert admin_out.startswith("UNAVAILABLE") and "ermission denied" in admin_out, admin_out
        # root still gets through, and the daemon serves on.
        assert d.health() == "SERVING"
    finally:
        d.stop()


# -- secrets ---------------------------------------------------------------------------------------

RUN = uuid.uuid4().hex[:8]
SECRETS = {
    "htpasswd": f"Htp-{RUN}-s3cr3t",
    "token": f"Tok-{RUN}-s3cr3t",
    "wrong": f"Wrong-{RUN}-s3cr3t",
    "request": f"Req-{RUN}-s3cr3t",
    "request_wrong": f"ReqWrong-{RUN}-s3cr3t",
}


def needles(tokens: list[str]) -> dict[str, str]:
    out = dict(SECRETS)
    for name, value in list(SECRETS.items()):
        for user in ("hal", "tom"):
            out[f"basic {user}/{name}"] = base64.b64encode(f"{user}:{value}".encode()).decode()
    for i, token in enumerate(tokens):
        out[f"token {i}"] = token
        out[f"token {i} signature"] = token.rsplit(".", 1)[-1]
    return out


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[Registry, Registry, list[str]]]:
    basic = Registry(htpasswd={"hal": SECRETS["htpasswd"]})
    token = Registry(token_auth=True, htpasswd={"tom": SECRETS["token"], "req": SECRETS["request"]})
    issued: list[str] = []
    assert token.token_server is not None
    original = token.token_server.issue

    def recording(user: str | None, scopes: list[str]) -> str:
        t = original(user, scopes)
        issued.append(t)
        return t

    token.token_server.issue = recording  # type: ignore[method-assign]
    try:
        yield basic, token, issued
    finally:
        basic.close()
        token.close()


def test_no_secret_in_logs_errors_or_redirects(
    containerd: PrivateContainerd, secured, tmp_path: pathlib.Path
) -> None:  # type: ignore[no-untyped-def]
    basic, token, issued = secured
    image = archives.simple_image(f"secret-{RUN}")
    archives.push(basic, "sec/app", "v1", image)
    archives.push(token, "sec/app", "v1", image)
    seen_headers: list[dict[str, str]] = []
    blobs = image.blobs()

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        seen_headers.append(dict(request.headers))
        data = blobs.get(request.path.rsplit("/", 1)[-1])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    key = StaticKey.ecdsa(label="security").public_pem.decode()
    errors: list[str] = []
    daemons: list[DaemonProcess] = []

    def daemon(hosts: dict, rules: list | None = None) -> DaemonProcess:  # type: ignore[type-arg]
        d = DaemonProcess(
            containerd.socket,
            {
                "log": {"level": "debug"},
                "registries": {
                    "retries": {"attempts": 2, "base_delay": 0.01, "max_delay": 0.02},
                    "hosts": hosts,
                },
                "verification": {"rules": rules or []},
            },
        )
        d.start()
        daemons.append(d)
        return d

    def expect_error(call, *codes: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.RpcError) as e:
            call()
        errors.append(e.value.details() or "")
        assert e.value.code() in codes, (e.value.code(), e.value.details())

    with HostileRegistry(elsewhere) as other, FaultProxy(basic.host) as proxy:
        # Blob GETs to the htpasswd registry are redirected to another host, as registries do
        # (to a CDN): the credentials must stay with the registry.
        proxy.add(Fault("redirect", path="/blobs/", method="GET", times=-1, location=other.url))
        auth = {
            proxy.host: {"auth": {"username": "hal", "password": SECRETS["htpasswd"]}},
            token.host: {"auth": {"username": "tom", "password": SECRETS["token"]}},
        }
        good = daemon(auth)
        for host in (proxy.host, token.host):
            name, _ = pull(good, f"{host}/sec/app:v1", SYSTEM)
            assert name == f"{host}/sec/app@{image.digest}"
        assert seen_headers, "the redirect was followed"
        bad = daemon(
            {
                proxy.host: {"auth": {"username": "hal", "password": SECRETS["wrong"]}},
                token.host: {"auth": {"auth": base64.b64encode(f"tom:{SECRETS['wrong']}".encode()).decode()}},
            }
        )
        for host in (proxy.host, token.host):
            expect_error(
                lambda h=host: pull(bad, f"{h}/sec/other:v1", SYSTEM),
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            )
        # Per-request credentials of Verify, right and wrong, on a daemon that has none configured.
        anon = daemon({}, [{"image": "127.0.0.1:*/sec/*", "publicKey": {"certificate": key}}])
        for user, password in (("req", SECRETS["request"]), ("req", SECRETS["request_wrong"])):
            creds = image_pb2.ImageServiceCredentials(host=token.host, username=user, password=password)
            expect_error(
                lambda c=creds: anon.images.Verify(
                    image_pb2.ImageServiceVerifyRequest(image_ref=f"{token.host}/sec/app:v1", credentials=c),
                    timeout=60,
                ),
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            )
        assert any("no signatures found" in e for e in errors), "the right request credentials were used"
        # Empty request credentials (a CRI pull without a pull secret) leave the configured auth be.
        configured = daemon(
            {token.host: {"auth": {"username": "tom", "password": SECRETS["token"]}}},
            [{"image": "127.0.0.1:*/sec/*", "publicKey": {"certificate": key}}],
        )
        empty = image_pb2.ImageServiceCredentials(host=token.host, username="", password="")
        with pytest.raises(grpc.RpcError) as e:
            configured.images.Verify(
                image_pb2.ImageServiceVerifyRequest(image_ref=f"{token.host}/sec/app:v1", credentials=empty),
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()
        assert "no signatures found" in (e.value.details() or "")
    for d in daemons:
        d.stop()
    assert len(issued) >= 2, "tokens were issued (and are searched for below)"

    # Configuration errors near secrets, as `imaged --check-config` prints them.
    head = "registries:\n  hosts:\n    r.example:\n      auth: "
    bad_configs = [
        head + f"{{auth: 'not-base64-{SECRETS['wrong']}'}}\n",
        head + f"{{username: x, password: [{SECRETS['wrong']}]}}\n",
        head + f"{{username: x, pasword: {SECRETS['wrong']}}}\n",
        # Unquoted values YAML reads as an alias or a tag: the parser would quote them.
        head + f"{{username: x, password: *{SECRETS['wrong']}}}\n",
        head + f"\n        username: x\n        password: !{SECRETS['wrong']}\n",
        f"registries:\n  hosts:\n    r.example:\n      mirrors: ['https://bob:{SECRETS['wrong']}@m.example']\n",
    ]
    check_outputs = []
    for i, text in enumerate(bad_configs):
        check_outputs.append(check_config_fails(tmp_path / f"bad{i}.yaml", text))

    texts = {f"log of daemon {i}": d.logs() for i, d in enumerate(daemons)}
    texts.update({f"error {i}": e for i, e in enumerate(errors)})
    texts.update({f"check-config {i}": o for i, o in enumerate(check_outputs)})
    texts.update({f"headers sent to {other.host}": repr(seen_headers)})
    leaks = [
        f"{what} found in {where}"
        for where, text in texts.items()
        for what, needle in needles(issued).items()
        if needle in text
    ]
    assert not leaks, leaks
    assert all("authorization" not in {k.lower() for k in h} for h in seen_headers), seen_headers
    assert "DEBUG" in texts["log of daemon 0"], "debug logging was on (the most talkative level)"


def test_unterminated_quote_in_a_secret_stays_out_of_config_errors(tmp_path: pathlib.Path) -> None:
    """A YAML syntax error right in a password line: the parser's message quotes the line."""
    text = (
        f'registries:\n  hosts:\n    r.example:\n      auth: {{username: x, password: "{SECRETS["wrong"]}\n'
    )
    out = check_config_fails(tmp_path / "broken.yaml", text)
    assert "broken.yaml" in out
    assert SECRETS["wrong"] not in out, out
