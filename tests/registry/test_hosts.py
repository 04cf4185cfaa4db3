"""hosts.toml parsing, endpoint ordering and the `registries` configuration schema."""

from __future__ import annotations

import base64
import pathlib

import pytest
from pydantic import ValidationError

from imaged.config import ConfigError, load_text
from imaged.errors import InvalidArgument
from imaged.registry.config import RegistriesConfig
from imaged.registry.hosts import Endpoint, endpoints, is_localhost, load_hosts_dir, parse_hosts_toml

FULL = """
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://mirror.example.com"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "certs/mirror-ca.pem"
  client = [["/abs/client.pem", "client.key"]]
  header = { "X-Custom" = "a", "X-Multi" = ["1", "2"] }

[host."http://10.0.0.5:5000/custom/api"]
  capabilities = ["pull", "resolve"]
  override_path = true
  ca = ["/etc/a.pem", "b.pem"]
  client = "single.pem"

[host."mirror2.example.com:8443"]
"""


def test_parse_full_hosts_toml() -> None:
    hf = parse_hosts_toml(FULL, registry="docker.io", base_dir="/etc/containerd/certs.d/docker.io")
    m1, m2, m3 = hf.mirrors
    assert m1 == Endpoint(
        scheme="https",
        host="mirror.example.com",
        path="/v2",
        capabilities=frozenset({"pull"}),
        mirror=True,
        skip_verify=True,
        ca_files=("/etc/containerd/certs.d/docker.io/certs/mirror-ca.pem",),
        client_certs=(("/abs/client.pem", "/etc/containerd/certs.d/docker.io/client.key"),),
        headers=(("X-Custom", "a"), ("X-Multi", "1"), ("X-Multi", "2")),
        namespace="docker.io",
    )
    assert m1.url("/library/nginx/manifests/latest") == (
        "https://mirror.example.com/v2/library/nginx/manifests/latest?ns=docker.io"
    )
    assert (m2.scheme, m2.host, m2.path) == ("http", "10.0.0.5:5000", "/custom/api")
    assert m2.ca_files == ("/etc/a.pem", "/etc/containerd/certs.d/docker.io/b.pem")
    assert m2.client_certs == (("/etc/containerd/certs.d/docker.io/single.pem", None),)
    assert (m3.scheme, m3.host, m3.path, m3.capabilities) == (
        "https",
        "mirror2.example.com:8443",
        "/v2",
        frozenset({"pull", "resolve", "push"}),
    )
    assert hf.server is not None
    assert hf.server.base_url == "https://registry-1.docker.io/v2"
    assert not hf.server.mirror and hf.server.namespace is None
    assert hf.server.capabilities == frozenset({"pull", "resolve"})
    assert hf.server.url("/x/manifests/y") == "https://registry-1.docker.io/v2/x/manifests/y"


def test_path_gets_v2_unless_override() -> None:
    hf = parse_hosts_toml('[host."https://m.example/prefix"]\n', registry="r.example")
    assert hf.mirrors[0].path == "/prefix/v2"
    hf = parse_hosts_toml('[host."https://m.example/prefix/v2/"]\n', registry="r.example")
    assert hf.mirrors[0].path == "/prefix/v2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("server = ", "not valid TOML"),
        ('[host."https://m"]\ncapabilities = ["pull", "fly"]', "unknown capabilities"),
        ('[host."https://m"]\nskip_verify = "yes"', "skip_verify"),
        ('[host."ftp://m"]\n', "scheme"),
        ('[host."https://m"]\nclient = [["a"]]', "client"),
        ('[host."https://m"]\nheader = { "X" = 1 }', "header"),
        ('[host."https://m"]\nca = 3', "ca must be"),
        ("server = 5", "server must be"),
    ],
)
def test_invalid_hosts_toml(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        parse_hosts_toml(text, registry="r.example", source="/x/hosts.toml")
    assert fragment in e.value.message and "/x/hosts.toml" in e.value.message


def test_is_localhost() -> None:
    for h in ("localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]:5000", "[::1]", "LOCALHOST"):
        assert is_localhost(h), h
    for h in ("example.com", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example.com"):
        assert not is_localhost(h), h


def test_default_endpoints() -> None:
    cfg = RegistriesConfig()
    assert [e.base_url for e in endpoints(cfg, "docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [e.base_url for e in endpoints(cfg, "index.docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [e.base_url for e in endpoints(cfg, "ghcr.io")] == ["https://ghcr.io/v2"]
    # Loopback registries are plain HTTP unless TLS is configured (containerd's default).
    assert [e.base_url for e in endpoints(cfg, "127.0.0.1:5000")] == ["http://127.0.0.1:5000/v2"]
    assert [e.base_url for e in endpoints(cfg, "localhost:5000")] == ["http://localhost:5000/v2"]


def test_config_overrides_scheme_and_tls(tmp_path: pathlib.Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked at load beyond existing")
    cfg = RegistriesConfig.model_validate(
        {
            "hosts": {
                "127.0.0.1:5000": {"tls": {"ca_file": str(ca)}},
                "plain.example:80": {"plain_http": True},
                "localhost:6000": {"plain_http": False},
            }
        }
    )
    (e,) = endpoints(cfg, "127.0.0.1:5000")
    assert (e.scheme, e.ca_files) == ("https", (str(ca),))
    assert endpoints(cfg, "plain.example:80")[0].scheme == "http"
    assert endpoints(cfg, "localhost:6000")[0].scheme == "https"


def test_mirror_order_config_then_hosts_toml_then_upstream(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "docker.io"
    d.mkdir()
    (d / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n'
        '[host."https://toml-mirror.example"]\n  capabilities = ["pull", "resolve"]\n'
        '[host."https://pull-only.example"]\n  capabilities = ["pull"]\n'
    )
    cfg = RegistriesConfig.model_validate(
        {"config_path": str(tmp_path), "hosts": {"docker.io": {"mirrors": ["cfg-mirror.example:5000"]}}}
    )
    eps = endpoints(cfg, "docker.io")
    assert [str(e) for e in eps] == [
        "https://cfg-mirror.example:5000",
        "https://toml-mirror.example",
        "https://pull-only.example",
        "https://registry-1.docker.io",
    ]
    assert [e.mirror for e in eps] == [True, True, True, False]
    assert [e.namespace for e in eps] == ["docker.io", "docker.io", "docker.io", None]
    assert [e.can("resolve") for e in eps] == [True, True, False, True]


def test_default_hosts_dir_and_port_names(tmp_path: pathlib.Path) -> None:
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://catch-all.example"]\n')
    (tmp_path / "r.example:5000").mkdir()
    (tmp_path / "r.example:5000" / "hosts.toml").write_text('server = "https://r.example:5000"\n')
    hf = load_hosts_dir(str(tmp_path), "other.example")
    assert hf is not None and [m.host for m in hf.mirrors] == ["catch-all.example"]
    hf = load_hosts_dir(str(tmp_path), "r.example:5000")
    assert hf is not None and hf.mirrors == () and hf.server is not None
    assert load_hosts_dir(str(tmp_path / "none"), "x") is None


# -- configuration schema ------------------------------------------------------------------------


def _err(doc: object) -> str:
    with pytest.raises(ValidationError) as e:
        RegistriesConfig.model_validate(doc)
    return str(e.value)


def test_auth_forms() -> None:
    auth = base64.b64encode(b"bob:pa:ss").decode()
    cfg = RegistriesConfig.model_validate(
        {
            "hosts": {
                "a.example": {"auth": {"username": "alice", "password": "pw"}},
                "b.example": {"auth": {"auth": auth}},
                "c.example": {"auth": {"identity_token": "refresh"}},
            }
        }
    )
    a, b, c = (cfg.host(h) for h in ("a.example", "b.example", "c.example"))
    assert a is not None and a.auth is not None and a.auth.basic() == ("alice", "pw")
    assert b is not None and b.auth is not None and b.auth.basic() == ("bob", "pa:ss")
    assert c is not None and c.auth is not None and c.auth.basic() is None
    assert "pw" not in repr(cfg) and "refresh" not in repr(cfg) and auth not in repr(cfg)


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ({"username": "u", "password": "p", "auth": "dTpw"}, "only one of"),
        ({"identity_token": "t", "auth": "dTpw"}, "only one of"),
        ({"username": "u"}, "together"),
        ({"password": "p"}, "together"),
        ({}, "give username and password"),
        ({"auth": "%%%"}, "base64"),
        ({"auth": base64.b64encode(b"nocolon").decode()}, "no ':'"),
        ({"username": "a:b", "password": "p"}, "must not contain ':'"),
    ],
)
def test_auth_validation(auth: dict[str, str], fragment: str) -> None:
    assert fragment in _err({"hosts": {"r.example": {"auth": auth}}})


def test_tls_validation(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.pem"
    f.write_text("x")
    assert "does not exist" in _err(
        {"hosts": {"r.example": {"tls": {"ca_file": str(tmp_path / "missing.pem")}}}}
    )
    assert "together" in _err({"hosts": {"r.example": {"tls": {"cert_file": str(f)}}}})
    ok = RegistriesConfig.model_validate(
        {"hosts": {"r.example": {"tls": {"cert_file": str(f), "key_file": str(f)}}}}
    )
    assert ok.host("r.example") is not None


def test_hosts_keys_and_mirrors_validation(tmp_path: pathlib.Path) -> None:
    assert "registry host" in _err({"hosts": {"https://r.example": {}}})
    assert "registry host" in _err({"hosts": {"r.example/path": {}}})
    assert "same registry" in _err({"hosts": {"docker.io": {}, "index.docker.io": {}}})
    assert "mirror" in _err({"hosts": {"r.example": {"mirrors": ["ftp://m"]}}})
    assert "not a directory" in _err({"config_path": str(tmp_path / "nope")})
    assert "greater than or equal" in _err({"retries": {"attempts": 0}})
    cfg = RegistriesConfig.model_validate({"hosts": {"Index.Docker.IO": {"plain_http": False}}})
    assert cfg.host("docker.io") is not None and cfg.host("registry-1.docker.io") is not None


def test_defaults() -> None:
    cfg = RegistriesConfig()
    assert cfg.max_manifest_size == 4 * 1024 * 1024
    assert cfg.max_blob_size is None
    assert cfg.retries.attempts >= 1 and cfg.timeouts.connect > 0
    assert cfg.config_path is None and cfg.hosts == {}


def test_root_config_reports_registry_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_text("registries:\n  hosts:\n    r.example:\n      auth: {username: u}\n", "c.yaml")
    assert "registries.hosts.r.example.auth" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_text("registries:\n  mirrorz: []\n", "c.yaml")
    assert "registries.mirrorz: unknown key" in str(e.value)
