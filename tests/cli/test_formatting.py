"""Presentation helpers: the exact forms talosctl prints (go-humanize SI sizes, RFC 3339, k=v labels)."""

from __future__ import annotations

import pytest

from imaged.cli.errors import one_line, redact
from imaged.cli.formatting import format_labels, human_size, rfc3339, short_digest, table


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (9, "9 B"),
        (10, "10 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1234, "1.2 kB"),
        (9_949, "9.9 kB"),
        (9_950, "10 kB"),  # rounds to 10.0, then printed without a decimal, as go-humanize does
        (82_854_982, "83 MB"),
        (1_028_750, "1.0 MB"),
        (3_400_000, "3.4 MB"),
        (1_500_000_000, "1.5 GB"),
        (10**18 * 3, "3.0 EB"),
    ],
)
def test_human_size_matches_go_humanize(n: int, text: str) -> None:
    assert human_size(n) == text


def test_short_digest() -> None:
    d = "sha256:" + "0123456789abcdef" * 4
    assert short_digest(d) == "sha256:0123456789ab"
    assert short_digest("sha256:abc") == "sha256:abc"
    assert short_digest("not-a-digest") == "not-a-digest"


def test_labels_sorted_k_v() -> None:
    assert format_labels({"b": "2", "a": "1", "io.cri-containerd.image": "managed"}) == (
        "a=1,b=2,io.cri-containerd.image=managed"
    )
    assert format_labels({}) == ""
    message = "verified by rule 0 (127.0.0.1:5000/demo/*): ECDSA key sha256:abc"
    assert format_labels({"imaged.dev/verified": message, "k": "short"}, 12) == (
        "imaged.dev/verified=verified by…,k=short"
    )
    assert format_labels({"k": "x" * 12}, 12) == "k=" + "x" * 12


def test_rfc3339_utc() -> None:
    assert rfc3339(1_767_225_600) == "2026-01-01T00:00:00Z"
    assert rfc3339(1_767_225_600, 500) == "2026-01-01T00:00:00Z"
    assert rfc3339(0, 0) is None


def test_table_aligns_like_tabwriter() -> None:
    out = table(("A", "BB", "C"), [("long-name", "x", ""), ("s", "yyyy", "z")])
    assert out.splitlines() == [
        "A           BB     C",
        "long-name   x",
        "s           yyyy   z",
    ]


def test_errors_are_one_line_and_hide_secrets() -> None:
    assert one_line("a\n  b\tc ") == "a b c"
    assert redact("login hunter2 failed for hunter2", {"hunter2", ""}) == "login ******** failed for ********"
