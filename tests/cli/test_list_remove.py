"""imagectl list and rm (and the global options) as subprocesses against the real daemon."""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import uuid

import pytest

from imaged import __version__
from tests.cli.conftest import Ctl, run_imagectl
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def add_image(containerd: PrivateContainerd, namespace: str = "k8s.io") -> tuple[str, archives.Image]:
    """Import a fresh, unique image with ctr (not through imaged); returns (name, image)."""
    marker = uuid.uuid4().hex[:10]
    name = f"example.com/cli/{marker}:v1"
    img = archives.simple_image(marker)
    containerd.ctr("images", "import", "-", namespace=namespace, input=archives.oci_archive([(name, img)]))
    return name, img


def test_list_table(ctl: Ctl, containerd: PrivateContainerd) -> None:
    name, img = add_image(containerd)
    r = ctl("list")
    assert r.rc == 0, r.err
    assert r.err == ""
    assert re.split(r"\s{3,}", r.lines[0]) == ["IMAGE", "DIGEST", "SIZE", "LABELS", "CREATED"]
    row = next(line for line in r.lines if line.startswith(name + " "))
    cells = re.split(r"\s{3,}", row)
    assert cells[0] == name
    assert cells[1] == img.digest  # not a terminal: the whole digest
    assert re.fullmatch(r"[0-9.]+ (B|kB|MB)", cells[2]) and cells[2] != "0 B"
    assert "io.cri-containerd.image=managed" in cells[3]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[4])
    names = [line.split()[0] for line in r.lines[1:]]
    assert names == sorted(names)
    # The `ls` alias and global options after the command give the same listing.
    r2 = run_imagectl("ls", "--socket", ctl.socket)
    assert r2.rc == 0 and name in r2.out


def test_list_json_quiet_filter(ctl: Ctl, containerd: PrivateContainerd) -> None:
    name, img = add_image(containerd)
    r = ctl("list", "-o", "json")
    assert r.rc == 0, r.err
    docs = [json.loads(line) for line in r.lines]
    assert all(set(d) == {"name", "digest", "size", "labels", "created_at"} for d in docs)
    mine = {d["name"]: d for d in docs if d["digest"] == img.digest}
    assert name in mine
    assert mine[name]["size"] == img.size
    assert mine[name]["labels"]["io.cri-containerd.image"] == "managed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", mine[name]["created_at"])
    # Aliases (sha256:<config id>) are listed too, with the same target.
    assert f"sha256:{img.config_digest.removeprefix('sha256:')}" in mine

    quiet = ctl("ls", "-q")
    assert quiet.rc == 0 and name in quiet.lines and all(" " not in n for n in quiet.lines)

    repo_glob = name.rsplit(":", 1)[0] + ":*"
    only = ctl("ls", "-q", "--filter", repo_glob)
    assert only.lines == [name]
    both = ctl("ls", "-o", "json", "--filter", repo_glob, "--filter", "sha256:*")
    assert {json.loads(line)["name"] for line in both.lines} >= {name, img.config_digest}
    assert ctl("ls", "--filter", "no-such-*").lines == ["IMAGE   DIGEST   SIZE   LABELS   CREATED"]


def test_list_on_a_terminal_shortens_digests(ctl: Ctl, containerd: PrivateContainerd) -> None:
    name, img = add_image(containerd)
    r = ctl.pty("list", "--filter", name)
    assert r.rc == 0, r.err
    row = next(line for line in r.out.splitlines() if line.startswith(name))
    assert f" {img.digest[:19]} " in row and img.digest not in row
    r = ctl.pty("list", "--no-trunc", "--filter", name)
    assert r.rc == 0 and img.digest in r.out


def test_system_namespace_is_separate(ctl: Ctl, containerd: PrivateContainerd) -> None:
    name, _ = add_image(containerd, namespace="system")
    assert name in ctl("--namespace", "system", "list", "-q").lines
    assert name not in ctl("list", "-q").lines
    r = ctl("-n", "system", "rm", name)
    assert (r.rc, r.out) == (0, f"removed {name}\n")
    assert name not in containerd.ctr("images", "ls", "-q", namespace="system").stdout.split()


def test_rm_removes_and_reports_missing(ctl: Ctl, containerd: PrivateContainerd) -> None:
    name, img = add_image(containerd)
    other, _ = add_image(containerd)
    missing = f"example.com/cli/missing-{uuid.uuid4().hex[:6]}:v1"
    r = ctl("rm", name, missing, other)
    assert r.rc == 1
    assert r.lines == [f"removed {name}", f"removed {other}"]
    assert r.err == f"imagectl: image {missing} not found\n"
    left = containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
    assert name not in left and other not in left
    assert img.config_digest not in left  # the alias went with the last tag
    again = ctl("remove", name)
    assert (again.rc, again.out, again.err) == (1, "", f"imagectl: image {name} not found\n")


def test_rm_invalid_reference_is_an_operation_failure(ctl: Ctl) -> None:
    r = ctl("rm", "UPPER/Case:tag")
    assert r.rc == 1
    assert r.err.startswith("imagectl: ") and r.err.count("\n") == 1
    assert "UPPER/Case:tag" in r.err


def test_socket_from_environment_and_flag_precedence(
    daemon: DaemonProcess, containerd: PrivateContainerd
) -> None:
    name, _ = add_image(containerd)
    r = run_imagectl("list", "-q", env={"IMAGED_SOCKET": daemon.socket})
    assert r.rc == 0 and name in r.lines
    r = run_imagectl(
        "--socket", daemon.socket, "list", "-q", env={"IMAGED_SOCKET": "/nonexistent/imaged.sock"}
    )
    assert r.rc == 0 and name in r.lines


def test_daemon_not_running_names_the_socket() -> None:
    path = "/tmp/imagectl-test-absent.sock"
    r = run_imagectl("--socket", path, "list")
    assert r.rc == 2
    assert r.out == ""
    assert (
        r.err
        == f"imagectl: cannot connect to imaged at {path}: No such file or directory (is imaged running?)\n"
    )
    # A stale socket file (the daemon died): connection refused, still one line naming it.
    with tempfile.TemporaryDirectory(prefix="ictl-", dir="/tmp") as d:
        stale = f"{d}/imaged.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(stale)
        s.close()
        for args in (("list",), ("rm", "x"), ("pull", "x"), ("verify", "x")):
            r = run_imagectl(*args, env={"IMAGED_SOCKET": stale})
            assert r.rc == 2, (args, r)
            assert (
                r.err
                == f"imagectl: cannot connect to imaged at {stale}: Connection refused (is imaged running?)\n"
            )
    # The default socket is used when neither flag nor environment names one.
    if not os.path.exists("/run/imaged/imaged.sock"):
        r = run_imagectl("list")
        assert r.rc == 2 and "/run/imaged/imaged.sock" in r.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--namespace", "bogus", "list"), "invalid choice: 'bogus'"),
        (("list", "--namespace", "bogus"), "invalid choice: 'bogus'"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        ((), "required: COMMAND"),
        (("rm",), "required: IMAGE"),
        (("--timeout", "-1", "list"), "timeout must be positive"),
        (("list", "-o", "yaml"), "invalid choice: 'yaml'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...], needle: str) -> None:
    r = run_imagectl(*args, env={"IMAGED_SOCKET": "/nonexistent/imaged.sock"})
    assert r.rc == 2
    assert r.out == ""
    assert r.err.startswith("imagectl: ") and r.err.count("\n") == 1, r.err
    assert needle in r.err


def test_version_and_help() -> None:
    r = run_imagectl("--version")
    assert (r.rc, r.out) == (0, f"imagectl {__version__}\n")
    h = run_imagectl("--help")
    assert h.rc == 0
    for word in ("list", "pull", "import", "rm", "verify", "completion", "IMAGED_SOCKET", "exit status"):
        assert word in h.out
