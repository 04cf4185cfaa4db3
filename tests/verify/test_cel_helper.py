"""The CEL helper process (verify/cel.py): started isolated from the daemon's working directory,
bounded in CPU, gone with its parent, and timed from when it is ready."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from imaged.verify.cel import CelError, CelEvaluator

VARS: dict[str, Any] = {"predicate": {"a": 1}, "predicateType": "t", "statement": {}, "image": {}}
# A regex compiled and run over 4 MB ten thousand times: more than 8 s of CPU in cel-cpp.
SLOW = 'predicate.l.all(x, predicate.l.all(y, !predicate.s.matches("(a|b)*" + string(y) + "c")))'
SLOW_VARS: dict[str, Any] = {
    "predicate": {"l": list(range(99)), "s": "a" * 4_000_000},
    "predicateType": "t",
    "statement": {},
    "image": {},
}


def helper_pid(cel: CelEvaluator) -> int:
    proc = cel._proc
    assert proc is not None and proc.poll() is None
    return proc.pid


def test_modules_in_the_daemons_working_directory_are_not_imported(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nraise SystemExit(0)\n")
    monkeypatch.chdir(tmp_path)
    cel = CelEvaluator()
    try:
        assert cel.evaluate("predicate.a == 1", VARS)
        assert not marker.exists()
        pid = helper_pid(cel)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        cel.close()


def test_the_helper_has_a_cpu_limit() -> None:
    cel = CelEvaluator()
    try:
        assert cel.evaluate("true", VARS)
        limits = pathlib.Path(f"/proc/{helper_pid(cel)}/limits").read_text()
        [line] = [x for x in limits.splitlines() if x.startswith("Max cpu time")]
        soft = line.split()[3]
        assert soft != "unlimited" and int(soft) <= 3600, line
    finally:
        cel.close()


PARENT = textwrap.dedent(
    """
    import sys
    from imaged.verify.cel import CelEvaluator
    from tests.verify.test_cel_helper import SLOW, SLOW_VARS, VARS
    cel = CelEvaluator(time_budget=600)
    assert cel.evaluate("true", VARS)
    print(cel._proc.pid, flush=True)
    cel.evaluate(SLOW, SLOW_VARS)  # killed meanwhile
    """
)


def test_the_helper_dies_with_its_parent(tmp_path: pathlib.Path) -> None:
    """A daemon killed during an evaluation leaves no helper computing on."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        time.sleep(0.5)  # inside the slow evaluation
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "the helper outlived its parent"
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_restarted_helper_gets_the_same_budget() -> None:
    """The budget is the evaluation's, from when the helper is ready: not 2 s + 10 s of start-up
    grace for the first evaluation after a kill."""
    cel = CelEvaluator(time_budget=0.5)
    try:
        for _ in range(2):  # a fresh helper each time: the previous one was killed
            start = time.monotonic()
            with pytest.raises(CelError, match="exceeded its time budget"):
                cel.evaluate(SLOW, SLOW_VARS)
            assert time.monotonic() - start < 0.5 + 3.0  # its start-up plus the budget, not 10.5 s
        assert cel.evaluate("predicate.a == 1", VARS)
    finally:
        cel.close()
