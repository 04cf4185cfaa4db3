"""The CRI socket's rules, without containerd: how a request's auth is read, when containerd's CRI
may do a pull into k8s.io, how its failures are reported, and the configuration."""

from __future__ import annotations

import base64
import pathlib

import grpc
import pytest
from pydantic import ValidationError

from imaged import errors
from imaged.config import Config
from imaged.cri.auth import configured_auth, containerd_ignores, request_credentials
from imaged.cri.transfer import pull_error
from imaged.cri.upstream import CriError
from imaged.pb.runtime.v1 import api_pb2
from imaged.registry.auth import Credentials
from imaged.registry.config import RegistriesConfig
from tests.cri.conftest import cri_transfer


def test_auth_is_read_as_containerds_cri_reads_it() -> None:
    host = "registry.example:5000"
    assert request_credentials(api_pb2.AuthConfig(), host) is None
    assert request_credentials(api_pb2.AuthConfig(username="u", password="p"), host) == Credentials("u", "p")
    b64 = base64.b64encode(b"u:p:with:colons\x00\x00").decode()
    assert request_credentials(api_pb2.AuthConfig(auth=b64), host) == Credentials("u", "p:with:colons")
    # containerd's order: username first, then the identity token, then `auth`.
    both = api_pb2.AuthConfig(identity_token="refresh", auth=b64)
    assert request_credentials(both, host) == Credentials(identity_token="refresh")
    token = request_credentials(api_pb2.AuthConfig(registry_token="bearer"), host)
    assert token == Credentials(registry_token="bearer") and containerd_ignores(token)
    assert not containerd_ignores(request_credentials(api_pb2.AuthConfig(username="u"), host))
    # server_address limits them to one registry (no scheme means https).
    for address in (host, f"https://{host}", f"https://{host}/v2/", f"http://{host}"):
        got = request_credentials(
            api_pb2.AuthConfig(username="u", password="p", server_address=address), host
        )
        assert got == Credentials("u", "p"), address
    other = api_pb2.AuthConfig(username="u", password="p", server_address="https://elsewhere.example")
    assert request_credentials(other, host) is None
    hub = api_pb2.AuthConfig(username="u", password="p", server_address="https://index.docker.io/v1/")
    assert request_credentials(hub, "docker.io") == Credentials("u", "p")
    with pytest.raises(errors.InvalidArgument):
        request_credentials(api_pb2.AuthConfig(auth="bm8tY29sb24="), host)  # "no-colon"
    # Never in a representation.
    assert "secret-p" not in repr(Credentials("u", "secret-p"))
    assert "bearer-secret" not in repr(Credentials(registry_token="bearer-secret"))


def test_configured_credentials_go_to_containerd_as_auth() -> None:
    cfg = RegistriesConfig.model_validate(
        {
            "hosts": {
                "a.example": {"auth": {"username": "u", "password": "p"}},
                "b.example": {"auth": {"auth": base64.b64encode(b"v:q").decode()}},
                "c.example": {"auth": {"identity_token": "t"}},
            }
        }
    )
    assert configured_auth(cfg, "a.example") == api_pb2.AuthConfig(username="u", password="p")
    assert configured_auth(cfg, "b.example") == api_pb2.AuthConfig(username="v", password="q")
    assert configured_auth(cfg, "c.example") == api_pb2.AuthConfig(identity_token="t")
    assert configured_auth(cfg, "d.example") is None


def test_containerd_pulls_only_where_it_reaches_the_registry_as_imaged_would(tmp_path: pathlib.Path) -> None:
    plain = cri_transfer({})
    assert plain.containerd_can_reach("127.0.0.1:5000")  # plain HTTP, as containerd does for loopback
    assert plain.containerd_can_reach("docker.io")
    assert plain.containerd_can_reach("ghcr.io")
    with_auth = cri_transfer({"hosts": {"ghcr.io": {"auth": {"username": "u", "password": "p"}}}})
    assert with_auth.containerd_can_reach("ghcr.io")  # credentials are passed along
    for host, settings in (
        ("ghcr.io", {"mirrors": ["https://mirror.example"]}),
        ("ghcr.io", {"tls": {"insecure_skip_verify": True}}),
        ("ghcr.io", {"plain_http": True}),
        ("127.0.0.1:5000", {"plain_http": False}),
    ):
        assert not cri_transfer({"hosts": {host: settings}}).containerd_can_reach(host), settings
    (tmp_path / "ghcr.io").mkdir()
    (tmp_path / "ghcr.io" / "hosts.toml").write_text('[host."https://mirror.example"]\n')
    hosts_dir = cri_transfer({"config_path": str(tmp_path)})
    assert not hosts_dir.containerd_can_reach("ghcr.io")
    assert hosts_dir.containerd_can_reach("quay.io")
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://mirror.example"]\n')
    assert not cri_transfer({"config_path": str(tmp_path)}).containerd_can_reach("quay.io")


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, "not found", errors.NotFound),
        (grpc.StatusCode.UNKNOWN, "failed to resolve reference: 401 Unauthorized", errors.Unauthenticated),
        (grpc.StatusCode.UNKNOWN, "unexpected status: 403 Forbidden", errors.PermissionDenied),
        (grpc.StatusCode.UNKNOWN, "failed commit on ref: unexpected commit digest", errors.DataLoss),
        (grpc.StatusCode.FAILED_PRECONDITION, "unexpected commit digest x, expected y", errors.DataLoss),
        (grpc.StatusCode.FAILED_PRECONDITION, "something else", errors.FailedPrecondition),
        (grpc.StatusCode.UNKNOWN, "httpReadSeeker: failed open: content at ... not found", errors.NotFound),
        (grpc.StatusCode.UNKNOWN, "read tcp: connection reset by peer", errors.Unavailable),
    ],
)
def test_containerds_failures_keep_their_words_under_imaged_codes(
    code: grpc.StatusCode, message: str, expected: type[errors.ImagedError]
) -> None:
    e = pull_error(CriError(code, message), "error pulling image x")
    assert type(e) is expected
    assert e.message == f"error pulling image x: containerd's CRI: {message}"


def test_the_cri_socket_is_a_third_distinct_listener() -> None:
    cfg = Config.model_validate({"listen": {"cri": {"path": "/run/imaged/cri.sock", "mode": "0600"}}})
    assert cfg.listen.cri is not None and cfg.listen.cri.mode == 0o600
    assert Config.model_validate({}).listen.cri is None
    assert Config.model_validate({}).pull.cri_transfer == "containerd"
    for listen in (
        {"cri": {"path": "/run/imaged/imaged.sock"}},
        {"readonly": {"path": "/run/x.sock"}, "cri": {"path": "/run/x.sock"}},
    ):
        with pytest.raises(ValidationError, match="must differ"):
            Config.model_validate({"listen": listen})
    with pytest.raises(ValidationError):
        Config.model_validate({"pull": {"cri_transfer": "sometimes"}})
