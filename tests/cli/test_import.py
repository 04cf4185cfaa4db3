"""imagectl import against the real daemon: files, standard input, compressed archives, errors.

Until the daemon serves Import (it answers UNIMPLEMENTED), the tests that need it skip with that
reason; the client-side checks (unreadable input, terminals) run regardless.
"""

from __future__ import annotations

import gzip
import pathlib
import re
import uuid

from tests.cli.conftest import Ctl, run_imagectl
from tests.support import archives
from tests.support.containerd import PrivateContainerd

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def unique(prefix: str) -> tuple[str, archives.Image]:
    marker = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return f"example.com/cli-import/{marker}:v1", archives.simple_image(marker)


def test_import_file(ctl: Ctl, containerd: PrivateContainerd, tmp_path: pathlib.Path) -> None:
    name, img = unique("file")
    path = tmp_path / "image.tar"
    path.write_bytes(archives.oci_archive([(name, img)]))
    r = ctl("import", str(path))
    assert r.rc == 0, r.err
    assert (r.out, r.err) == (f"imported image {name}\n", "")  # piped: nothing but the result
    assert name in ctl("list", "-q").lines
    assert name in containerd.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()


def test_import_stdin_docker_archive_gzip_system(ctl: Ctl, containerd: PrivateContainerd) -> None:
    marker = f"stdin-{uuid.uuid4().hex[:8]}"
    data = gzip.compress(archives.docker_archive([([f"cli/{marker}:v1"], archives.simple_image(marker))]))
    r = ctl("-n", "system", "import", "-", input=data)
    assert r.rc == 0, r.err
    name = f"docker.io/cli/{marker}:v1"  # docker-save names are normalized
    assert r.out == f"imported image {name}\n"
    assert name in ctl("-n", "system", "list", "-q").lines


def test_import_on_a_terminal_shows_bytes_sent(ctl: Ctl, tmp_path: pathlib.Path) -> None:
    name, img = unique("tty")
    path = tmp_path / "image.tar"
    path.write_bytes(archives.oci_archive([(name, img)]))
    r = ctl.pty("import", str(path))
    text = ANSI.sub("", r.out).replace("\r", "\n")
    assert r.rc == 0, r.err
    assert "\x1b[" in r.out
    assert re.search(r"(sending|sent).*MB", text)
    assert text.rstrip().endswith(f"imported image {name}")


def test_import_garbage_fails_with_one_line(ctl: Ctl, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "garbage.tar"
    path.write_bytes(b"this is not a tar archive" * 100)
    r = ctl("import", str(path))
    assert r.rc == 1
    assert r.out == "" and r.err.startswith("imagectl: ") and r.err.count("\n") == 1


def test_import_unreadable_input_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    env = {"IMAGED_SOCKET": "/nonexistent/imaged.sock"}  # refused before any connection
    missing = tmp_path / "missing.tar"
    r = run_imagectl("import", str(missing), env=env)
    assert (r.rc, r.out) == (2, "")
    assert r.err == f"imagectl: cannot open {missing}: No such file or directory\n"
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    r = run_imagectl("import", str(empty), env=env)
    assert (r.rc, r.err) == (2, f"imagectl: {empty} is empty: nothing to import\n")
    r = run_imagectl("import", str(tmp_path), env=env)
    assert r.rc == 2 and "Is a directory" in r.err


def test_import_refuses_a_terminal_on_stdin(ctl: Ctl) -> None:
    r = ctl.pty("import", "-")
    assert (r.rc, r.err) == (
        2,
        "imagectl: refusing to read an image archive from a terminal; pipe one in or name a file\n",
    )
