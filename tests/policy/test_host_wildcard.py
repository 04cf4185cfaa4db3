"""Issue 19.1: a `*` in a pattern's host part matches the host only, never across `/`.

The attack: with `*.corp.example/*` skipped and everything else requiring a signature, an unsigned
image pushed to any registry under a repository path holding `.corp.example/` matched the skip
rule and was pulled."""

from __future__ import annotations

import pathlib
import subprocess

import grpc
import yaml

from tests.policy.conftest import key_rule, no_leftovers, pull, push_unsigned, records, refused
from tests.support.daemon import run_imaged


def test_host_star_does_not_span_slashes(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    policy = {
        "noMatch": "deny",
        "rules": [{"image": "*.corp.example/*", "skip": True}, key_rule("*", key)],
    }
    d = start(policy)
    repo = "evil/mirror.corp.example/app"
    push_unsigned(reg, repo, "host-star-evil")
    ref = f"{reg.host}/{repo}:v1"
    e = refused(lambda: pull(d, ref))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    assert "no signatures found" in (e.details() or "") and "rule 1 (*)" in (e.details() or ""), e.details()
    assert ref not in records(d)
    no_leftovers(containerd)


def test_wildcard_host_port_is_read_as_references_read_it(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    """`127.0.0.*:0<port>` names the registry as `127.0.0.1:0<port>` would: a deny rule written so
    matched nothing (the host was only lowercased), and the image was pulled."""
    name, port = reg.host.rsplit(":", 1)
    prefix = name.rsplit(".", 1)[0]
    d = start({"rules": [{"image": f"{prefix}.*:0{port}/wild/*", "deny": True}]})
    push_unsigned(reg, "wild/app", "host-star-port")
    ref = f"{reg.host}/wild/app:v1"
    e = refused(lambda: pull(d, ref))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
    assert "denied by matched rule 0" in (e.details() or ""), e.details()
    assert ref not in records(d)
    no_leftovers(containerd)


def check_config(tmp_path: pathlib.Path, verification: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "imaged.yaml"
    path.write_text(yaml.safe_dump({"verification": verification}))
    return run_imaged("--check-config", str(path), "--strict")


def test_check_config_warns_that_a_port_walks_around_a_wildcard_host(tmp_path, key) -> None:  # type: ignore[no-untyped-def]
    """A `*` in a host does not cover a port: with noMatch allow, `a.example.com:8443` escapes a
    rule for `*.example.com/*`."""
    r = check_config(tmp_path, {"rules": [key_rule("*.example.com/*", key), {"image": "x*/*", "deny": True}]})
    assert r.returncode == 1, (r.stdout, r.stderr)
    for rule, host in (("rules[0]", "'*.example.com:*/*'"), ("rules[1]", "'x*:*/*'")):
        line = next((ln for ln in r.stdout.splitlines() if rule in ln and "port" in ln), "")
        assert host in line, r.stdout
    for verification in (
        {"rules": [key_rule("*.example.com:*/*", key), {"image": "*.example.com:8*/*", "deny": True}]},
        {"rules": [key_rule("*.example.com/*", key)], "noMatch": "deny"},
        {"rules": [{"image": "*.example.com/*", "skip": True}]},
    ):
        r = check_config(tmp_path, verification)
        assert "port" not in r.stdout, (verification, r.stdout)
