"""Issue 19.2: other spellings of a registry do not escape its rule.

The attack: with a rule for `127.0.0.1:PORT/demo/*`, the same registry written `127.0.0.1:0PORT`
or `127.0.0.1:0000PORT` matched no rule and the unsigned image was pulled; `ghcr.io:0443/...` and
`registry-1.docker.io:0443/...` missed rules written for those registries."""

from __future__ import annotations

import grpc

from imaged.pb.machine import image_pb2
from tests.policy.conftest import key_rule, no_leftovers, pull, push_unsigned, records, refused
from tests.support.daemon import run_imaged


def test_port_spellings_and_hub_aliases_meet_their_rules(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    policy = {
        "rules": [
            key_rule(f"{reg.host}/demo/*", key),
            {"image": "ghcr.io/org/*", "deny": True},
            {"image": "nginx", "deny": True},
        ]
    }
    d = start(policy)
    push_unsigned(reg, "demo/unsigned", "spelling-unsigned")
    for zeros in ("0", "0000"):
        ref = f"127.0.0.1:{zeros}{reg.port}/demo/unsigned:v1"
        e = refused(lambda ref=ref: pull(d, ref))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (ref, e.details())
        assert "no signatures found" in (e.details() or ""), e.details()
        assert not [n for n in records(d) if "demo/unsigned" in n]
    for ref in ("ghcr.io:0443/org/app:v1", "registry-1.docker.io:0443/library/nginx:1.27"):
        e = refused(lambda ref=ref: d.images.Verify(image_pb2.ImageServiceVerifyRequest(image_ref=ref)))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (ref, e.details())
        assert "denied by matched rule" in (e.details() or "")
    for bad in (
        "127.0.0.1:65536/demo/unsigned:v1",
        "127.0.0.1:0/demo/unsigned:v1",
        "ghcr.io:99999999/org/app",
    ):
        e = refused(lambda bad=bad: pull(d, bad))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, e.details())
        assert "port" in (e.details() or ""), e.details()
    no_leftovers(containerd)


def test_check_config_suggests_no_match_deny_for_host_rules(tmp_path, reg, key) -> None:  # type: ignore[no-untyped-def]
    """localhost and 127.0.0.1 (or two DNS names of one server) cannot be told apart: a policy that
    needs a host rule to catch an image should not let unmatched images through."""
    import yaml

    path = tmp_path / "imaged.yaml"
    path.write_text(yaml.safe_dump({"verification": {"rules": [key_rule(f"{reg.host}/demo/*", key)]}}))
    r = run_imaged("--check-config", str(path))
    assert r.returncode == 0, r.stderr
    assert "noMatch: deny" in r.stderr, r.stderr
    path.write_text(
        yaml.safe_dump({"verification": {"noMatch": "deny", "rules": [key_rule(f"{reg.host}/demo/*", key)]}})
    )
    r = run_imaged("--check-config", str(path))
    assert r.returncode == 0 and "noMatch" not in r.stderr, r.stderr
