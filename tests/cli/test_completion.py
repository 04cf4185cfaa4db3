"""`imagectl completion bash|zsh`: the scripts load in the real shells and complete commands,
options, choices and image names (from `imagectl list -q` on the same socket and namespace)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from tests.cli.conftest import run_imagectl
from tests.support import archives
from tests.support.containerd import PrivateContainerd
from tests.support.daemon import DaemonProcess

BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"

# Drive zsh's real completion system in a pseudo-terminal (zsh/zpty) and print the matches it adds.
ZSH_CAPTURE = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' ; PROMPT='' ; RPROMPT=''"
zpty -w z "autoload -Uz compinit; compinit -u -D"
zpty -w z "source $1"
zpty -w z 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  (( $#__hits )) || return 1
  local h; for h in $__hits; do print -r -- "<M>$h"; done
}'
zpty -w z "bindkey '^I' complete-word; zstyle ':completion:*' completer _complete"
zpty -w z "print -r -- '<READY>'"
while zpty -r z line; do [[ $line == *'<READY>'* && $line != *print* ]] && break; done
zpty -w -n z "$2"$'\t'
zpty -w -n z $'\C-a\C-kprint -r -- "<DONE>"\n'
while zpty -r z line; do
  [[ $line == *'<DONE>'* && $line != *print* ]] && break
  [[ $line == *'<M>'* ]] && print -r -- "${${line#*<M>}%%$'\r'}"
done
zpty -d z
"""


@pytest.fixture(scope="module")
def bindir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A PATH entry whose `imagectl` is this checkout's, as the scripts call `command imagectl`."""
    d = tmp_path_factory.mktemp("bin")
    (d / "imagectl").write_text(f'#!/bin/sh\nexec {sys.executable} -m imaged.cli.main "$@"\n')
    (d / "imagectl").chmod(0o755)
    return d


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("completion")
    out = {}
    for shell in ("bash", "zsh"):
        r = run_imagectl("completion", shell)
        assert r.rc == 0 and r.err == ""
        out[shell] = d / shell
        out[shell].write_text(r.out)
    return out


def bash_complete(script: pathlib.Path, words: list[str], bindir: pathlib.Path, with_lib: bool) -> list[str]:
    """COMPREPLY for `words` (the last one being completed), with or without bash-completion loaded."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    lib = f"source {BASH_COMPLETION}; " if with_lib else ""
    prog = (
        f"{lib}source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        f'COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}; '
        '_imagectl; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def zsh_complete(script: pathlib.Path, line: str, bindir: pathlib.Path) -> list[str]:
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(
        ["zsh", "-f", "-c", ZSH_CAPTURE, "zcap", str(script), line],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [m for m in r.stdout.splitlines() if m.strip()]


@pytest.fixture(scope="module")
def image(containerd: PrivateContainerd) -> str:
    marker = uuid.uuid4().hex[:8]
    name = f"example.com/compl/{marker}:v1"
    containerd.ctr(
        "images",
        "import",
        "-",
        namespace="system",
        input=archives.oci_archive([(name, archives.simple_image(marker))]),
    )
    return name


@pytest.mark.parametrize("with_lib", [False, True], ids=["plain-bash", "bash-completion"])
def test_bash(
    scripts: dict[str, pathlib.Path], bindir: pathlib.Path, with_lib: bool, daemon: DaemonProcess, image: str
) -> None:
    if with_lib:
        assert pathlib.Path(BASH_COMPLETION).exists(), "bash-completion is missing: `make test` installs it"
    s = scripts["bash"]
    assert bash_complete(s, ["imagectl", ""], bindir, with_lib) == [
        "list",
        "ls",
        "pull",
        "import",
        "rm",
        "remove",
        "verify",
        "policy",
        "completion",
    ]
    assert bash_complete(s, ["imagectl", "l"], bindir, with_lib) == ["list", "ls"]
    assert bash_complete(s, ["imagectl", "--namespace", ""], bindir, with_lib) == ["cri", "system", "inmem"]
    assert bash_complete(s, ["imagectl", "ls", "-o", ""], bindir, with_lib) == ["table", "json"]
    assert bash_complete(s, ["imagectl", "verify", "x", "-o", ""], bindir, with_lib) == ["text", "json"]
    assert "--no-trunc" in bash_complete(s, ["imagectl", "list", "--"], bindir, with_lib)
    assert bash_complete(s, ["imagectl", "verify", "--pass"], bindir, with_lib) == [
        "--password",
        "--password-stdin",
    ]
    assert bash_complete(s, ["imagectl", "completion", ""], bindir, with_lib) == ["bash", "zsh"]
    # Images come from the daemon named on the line, in the namespace named on the line.
    line = ["imagectl", "--socket", daemon.socket, "-n", "system", "rm", "example.com/compl/"]
    got = bash_complete(s, line, bindir, with_lib)
    assert image in got or image.split(":", 1)[1] in got, got  # bash-completion trims up to the last ':'
    assert (
        bash_complete(
            s, ["imagectl", "--socket", daemon.socket, "rm", "example.com/compl/"], bindir, with_lib
        )
        == []
    )  # not in the cri namespace


def test_zsh(
    scripts: dict[str, pathlib.Path], bindir: pathlib.Path, daemon: DaemonProcess, image: str
) -> None:
    s = scripts["zsh"]
    assert subprocess.run(["zsh", "-n", str(s)], timeout=30).returncode == 0
    assert zsh_complete(s, "imagectl l", bindir) == ["list", "ls"]
    assert set(zsh_complete(s, "imagectl -n ", bindir)) == {"cri", "system", "inmem"}
    assert set(zsh_complete(s, "imagectl ls -o ", bindir)) == {"table", "json"}
    assert set(zsh_complete(s, "imagectl verify --pass", bindir)) == {"--password", "--password-stdin"}
    assert zsh_complete(s, f"imagectl --socket {daemon.socket} -n system rm example.com/compl/", bindir) == [
        image
    ]


def test_unknown_shell() -> None:
    r = run_imagectl("completion", "fish")
    assert r.rc == 2 and "invalid choice: 'fish'" in r.err
