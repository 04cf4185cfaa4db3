"""Issue 19.1: a `*` in a pattern's host part matches the host only, never across `/`.

The attack: with `*.corp.example/*` skipped and everything else requiring a signature, an unsigned
image pushed to any registry under a repository path holding `.corp.example/` matched the skip
rule and was pulled."""

from __future__ import annotations

import grpc

from tests.policy.conftest import key_rule, no_leftovers, pull, push_unsigned, records, refused


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
