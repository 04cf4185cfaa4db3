"""imagectl pull from a real registry: plain lines when piped, a live display on a terminal."""

from __future__ import annotations

import itertools
import re
import uuid

from tests.cli.conftest import Ctl
from tests.support.containerd import PrivateContainerd
from tests.support.images import push_test_image
from tests.support.registry import Registry

LINE = re.compile(
    r"^layer (?P<id>[0-9a-f]{12}) "
    r"(?P<what>downloading \S+ \S+/\S+ \S+ \(\d+\.\d%\)|downloading \S+ \S+|download complete"
    r"|extracting \(\d+\.\ds\)|pull complete|already exists)$"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def unique_repo(prefix: str) -> str:
    return f"cli/{prefix}-{uuid.uuid4().hex[:8]}"


def test_pull_piped_prints_plain_lines(ctl: Ctl, containerd: PrivateContainerd, registry: Registry) -> None:
    repo = unique_repo("plain")
    digest = push_test_image(registry, repo, "v1", layers=3)
    ref = f"{registry.host}/{repo}:v1"
    r = ctl("pull", ref)
    assert r.rc == 0, r.err
    assert r.err == ""
    *progress, last = r.lines
    assert last == f"pulled image {registry.host}/{repo}@{digest}"
    states: dict[str, list[str]] = {}
    for line in progress:
        m = LINE.match(line)
        assert m, f"unexpected line {line!r}"
        states.setdefault(m["id"], []).append(m["what"])
    assert len(states) == 3
    for what in states.values():
        assert what[-1] in ("pull complete", "already exists")
        if what[-1] == "pull complete":
            assert "download complete" in what
            assert what.index("download complete") < what.index("pull complete")
            # only state changes: no line repeats its predecessor
            assert all(a != b for a, b in itertools.pairwise(what))
    assert ref in containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()

    # Present and unpacked: no progress at all, just the pinned reference.
    again = ctl("pull", ref)
    assert (again.rc, again.lines) == (0, [last])


def test_pull_on_a_terminal_shows_layers_and_total(ctl: Ctl, registry: Registry) -> None:
    repo = unique_repo("tty")
    digest = push_test_image(registry, repo, "v1", layers=2)
    r = ctl.pty("--namespace", "system", "pull", f"{registry.host}/{repo}:v1")
    assert (r.rc, r.err) == (0, "")
    out = r.out
    text = ANSI.sub("", out).replace("\r", "\n")  # frames are redrawn with CR and cursor moves
    assert "\x1b[" in out  # a live display, redrawn in place
    assert text.rstrip().endswith(f"pulled image {registry.host}/{repo}@{digest}")
    layer_ids = set(re.findall(r"^([0-9a-f]{12}) ", text, re.M))
    assert len(layer_ids) == 2
    assert re.search(r"^total .*2/2 layers complete", text, re.M)
    # The final frame (before the last line) shows every layer finished.
    final = text[text.rindex("total ") :].splitlines()
    for lid in layer_ids:
        row = next(line for line in final if line.startswith(lid))
        assert row.rstrip().endswith(("complete", "already exists")), row
        # Whether a "downloading" frame is drawn depends on timing (a small layer arrives between
        # two refreshes); the bytes each layer moved are in its final row either way.
        assert re.search(r"\d+(\.\d+)? ?[kMG]?B", row), row


def test_pull_errors(ctl: Ctl, registry: Registry) -> None:
    missing = f"{registry.host}/cli/missing-{uuid.uuid4().hex[:6]}:v1"
    r = ctl("pull", missing)
    assert r.rc == 1
    assert r.out == ""
    assert r.err.startswith("imagectl: ") and r.err.count("\n") == 1
    assert missing.rsplit(":", 1)[0].split("/", 1)[1] in r.err
    bad = ctl("pull", "Not A Reference")
    assert bad.rc == 1 and bad.err.startswith("imagectl: ") and bad.err.count("\n") == 1
