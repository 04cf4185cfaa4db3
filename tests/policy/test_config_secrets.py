"""Issue 19.9: no configuration error (nor log line) repeats a configured secret.

The attack (a leak to whoever reads the check's output or the daemon's log): a mirror URL with
credentials was echoed in the error when it had no scheme (`bob:secret@mirror`) or when the
password held a `/` (`https://bob:se/cret@mirror`), which the redaction did not expect. The same
goes for endpoints in a hosts.toml, which the daemon reads (and reports on) at request time."""

from __future__ import annotations

import uuid

import grpc
import pytest
import yaml

from tests.policy.conftest import pull, refused
from tests.support.daemon import run_imaged

SECRET = f"Mirr0r-{uuid.uuid4().hex[:8]}-pw"
MIRRORS = [
    f"bob:{SECRET}@mirror.example",
    f"bob:{SECRET}@mirror.example:5000/v2",
    f"https://bob:pa/{SECRET}@mirror.example",
    f"https://bob:{SECRET}/x@mirror.example",
    f"https://bob@{SECRET}@mirror.example",
    f"ftp://bob:{SECRET}@mirror.example",
    f"https://bob:{SECRET}",
    f"bob:{SECRET}",
    f"https://{SECRET}:@mirror.example",
    f"https://mirror.example:{SECRET}",
]


def test_a_hosts_key_with_credentials_is_not_echoed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "imaged.yaml"
    path.write_text(yaml.safe_dump({"registries": {"hosts": {f"https://bob:{SECRET}@r.example": {}}}}))
    r = run_imaged("--check-config", str(path))
    assert r.returncode == 2 and "registries.hosts" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr, r.stderr


@pytest.mark.parametrize("mirror", MIRRORS)
def test_mirror_credentials_stay_out_of_config_errors(tmp_path, mirror) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "imaged.yaml"
    path.write_text(yaml.safe_dump({"registries": {"hosts": {"docker.io": {"mirrors": [mirror]}}}}))
    for args in (["--check-config", str(path)], ["--config", str(path)]):
        r = run_imaged(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "registries.hosts.docker.io.mirrors" in r.stderr, r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stderr


def test_hosts_toml_credentials_stay_out_of_errors_and_logs(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    certs = tmp_path / "certs.d"
    for host, url in (
        ("a.example", f"https://bob:{SECRET}@mirror.example"),
        ("b.example", f"bob:pa/{SECRET}@m"),
    ):
        (certs / host).mkdir(parents=True)
        (certs / host / "hosts.toml").write_text(f'[host."{url}"]\ncapabilities = ["pull", "resolve"]\n')
    d = start({}, registries={"config_path": str(certs), "retries": {"attempts": 1}})
    for host in ("a.example", "b.example"):
        e = refused(lambda host=host: pull(d, f"{host}/app:v1"))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        assert "hosts.toml" in (e.details() or "") and SECRET not in (e.details() or ""), e.details()
    d.stop()
    assert SECRET not in d.logs()


@pytest.mark.parametrize(
    ("hosts", "where"),
    [
        # An error below a hosts key that holds credentials: pydantic's location named the key.
        ({f"bob:{SECRET}@mirror.example": {"plain_http": "maybe"}}, "registries.hosts"),
        ({f"bob:{SECRET}@mirror.example": {"mirrors": [1]}}, "registries.hosts"),
        ({f"https://bob:{SECRET}@mirror.example": {"tls": {"nope": 1}}}, "registries.hosts"),
        ({f"mirror.example/{SECRET}": {"plain_http": "maybe"}}, "registries.hosts"),
        # An unknown key under auth (a password given under a misspelt name, say).
        (
            {"ghcr.io": {"auth": {"username": "bob", "password": "x", SECRET: 1}}},
            "registries.hosts.ghcr.io.auth",
        ),
    ],
)
def test_a_key_path_with_credentials_is_not_echoed(tmp_path, hosts, where) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "imaged.yaml"
    path.write_text(yaml.safe_dump({"registries": {"hosts": hosts}}))
    for args in (["--check-config", str(path)], ["--config", str(path)]):
        r = run_imaged(*args)
        assert r.returncode == 2 and where in r.stderr, r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stderr
