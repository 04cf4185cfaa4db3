"""Issue 19.6: patterns that can never match are refused at load, with the reason.

The attack (or the accident): `ghcr.io/MyOrg/*` (references are lower-case) and a bare host
`registry.corp.example` (read as the Docker Hub repository docker.io/library/registry.corp.example)
were accepted, so the protection they were written for silently did not exist: with
`noMatch: allow` the images they meant were pulled unverified."""

from __future__ import annotations

import pytest
import yaml

from tests.policy.conftest import key_rule
from tests.support.daemon import run_imaged


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("ghcr.io/MyOrg/*", "upper-case letters in its repository path (MyOrg/*)"),
        ("127.0.0.1:5000/Demo/app", "write '127.0.0.1:5000/demo/app'"),
        ("library/Nginx", "can never match"),
        ("registry.corp.example", "write 'registry.corp.example/*'"),
        ("*.corp.example", "docker.io/library/*.corp.example"),
        ("localhost:5000", "write 'localhost:5000/*'"),
        ("*.docker.io/*", "write 'docker.io/*'"),
        ("*.example.com:0*/*", "leading zero"),
    ],
)
def test_dead_pattern_is_refused_by_check_config_and_at_start(tmp_path, key, pattern, reason) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "imaged.yaml"
    path.write_text(
        yaml.safe_dump(
            {"verification": {"rules": [{"image": "ok.example/*", "skip": True}, key_rule(pattern, key)]}}
        )
    )
    for args in (["--check-config", str(path)], ["--config", str(path)]):
        r = run_imaged(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "verification.rules[1]" in r.stderr and reason in r.stderr, r.stderr


def test_lower_case_and_host_patterns_still_load(tmp_path, key) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "imaged.yaml"
    rules = [
        key_rule(p, key) for p in ("GHCR.io/myorg/*", "registry.corp.example/*", "nginx", "*", "MyReg/app")
    ]
    path.write_text(yaml.safe_dump({"verification": {"rules": rules}}))
    r = run_imaged("--check-config", str(path))
    assert r.returncode == 0, r.stderr
