"""Issue 19.3: a digest recorded in containerd is still decided by the current policy.

The attack: `Pull repo@sha256:...` of a digest already recorded returned at once, before the
rules were consulted, so deny rules, `noMatch: deny` and verify rules all let it through; and
`repo:newtag@sha256:...` made a new tag record carrying the verified label of the record it was
found under."""

from __future__ import annotations

import grpc

from tests.policy.conftest import (
    key_rule,
    no_leftovers,
    pull,
    push_signed,
    push_unsigned,
    records,
    refused,
    reload,
)
from tests.support.registry import Registry

VERIFIED = "imaged.dev/verified"


def test_recorded_digest_meets_deny_no_match_and_verify_rules(reg, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    repo = "recorded/app"
    digest = push_unsigned(reg, repo, "recorded-unsigned")
    d = start({"rules": [{"image": f"{reg.host}/recorded/*", "skip": True}]})
    pinned = f"{reg.host}/{repo}@{digest}"
    assert pull(d, f"{reg.host}/{repo}:v1") == pinned  # recorded while the policy allowed it
    for policy, code, fragment in (
        ({"rules": [{"image": f"{reg.host}/recorded/*", "deny": True}]}, "PERMISSION_DENIED", "denied by"),
        (
            {"noMatch": "deny", "rules": [{"image": "other.example/*", "skip": True}]},
            "PERMISSION_DENIED",
            "noMatch",
        ),
        ({"rules": [key_rule(f"{reg.host}/recorded/*", key)]}, "PERMISSION_DENIED", "no signatures found"),
    ):
        reload(d, policy)
        for ref in (pinned, f"{reg.host}/{repo}:other@{digest}"):
            e = refused(lambda ref=ref: pull(d, ref))
            assert e.code().name == code, (policy, ref, e.details())
            assert fragment in (e.details() or ""), e.details()
        assert f"{reg.host}/{repo}:other" not in records(d)
    no_leftovers(containerd)


def test_a_recorded_verdict_counts_only_under_the_same_rule(ps, key, start, containerd) -> None:  # type: ignore[no-untyped-def]
    with Registry() as reg:
        repo = "verdict/app"
        digest = push_signed(reg, ps, key, repo, "recorded-signed")
        signed_by_key = {"rules": [key_rule(f"{reg.host}/verdict/*", key)]}
        d = start(signed_by_key)
        pinned = f"{reg.host}/{repo}@{digest}"
        assert pull(d, f"{reg.host}/{repo}:v1") == pinned
        assert records(d)[pinned].labels[VERIFIED].startswith("verified via legacy signature")
        d.stop()

        # Another key now: the recorded verdict was made under another rule, so it verifies again
        # (and fails); no new tag carries the old label.
        other_key = ps.static_key("another-key")
        d = start({"rules": [key_rule(f"{reg.host}/verdict/*", other_key)]})
        e = refused(lambda: pull(d, f"{reg.host}/{repo}:newtag@{digest}"))
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e.details()
        assert "does not verify with the rule's" in (e.details() or ""), e.details()
        assert f"{reg.host}/{repo}:newtag" not in records(d)
        d.stop()

        # The same rule and key, registry gone: the recorded verdict is enough, no request made.
        reg.stop()
        d = start(signed_by_key)
        assert pull(d, f"{reg.host}/{repo}:newtag@{digest}") == pinned
        listed = records(d)
        assert listed[f"{reg.host}/{repo}:newtag"].labels[VERIFIED] == listed[pinned].labels[VERIFIED]
        # ... but not under another rule, even one saying the same about the image: it asks.
        d.stop()
        d = start({"rules": [key_rule(f"{reg.host}/verdict/app", key)]})
        e = refused(lambda: pull(d, pinned))
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
        d.stop()

        # A skip rule allows the recorded image, and gives the new tag no verified label.
        d = start({"rules": [{"image": f"{reg.host}/verdict/*", "skip": True}]})
        assert pull(d, f"{reg.host}/{repo}:skipped@{digest}") == pinned
        listed = records(d)
        assert VERIFIED not in listed[f"{reg.host}/{repo}:skipped"].labels, (
            "a label copied from another record"
        )
        no_leftovers(containerd)
