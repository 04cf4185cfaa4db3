"""CEL policies over attestation predicates: compiled at configuration load, evaluated in a helper.

The library is cel-expr-python, the CEL project's own Python binding of cel-cpp (the runtime family
of cel-go, which Kubernetes admission policies use): expressions are parsed *and type-checked* at
load (an unknown variable or `1 + "a"` is a configuration error, not a surprise at pull time),
regexes are RE2 (linear time), and comprehensions have an iteration budget.

Variables: `predicate` (the statement's predicate, JSON), `predicateType` (string), `statement`
(the whole in-toto statement) and `image` (`{"digest": "sha256:...", "repository": "..."}`). The
expression must evaluate to `true`; false, an error (a missing key) or a non-bool refuses.

Cost is bounded three ways: the expression's size (MAX_EXPRESSION), the input's (the statement is
a blob of at most 1 MiB, discovery's bound), and time: cel-cpp holds the GIL while it evaluates,
so evaluations run in a helper process (imaged.verify.cel_worker, started at first use, with an
address-space and a CPU-time limit) that is killed when one exceeds TIME_BUDGET seconds; the
verification then fails saying so. A helper that dies is restarted for the next evaluation, and one
that has used half its CPU limit is replaced before it reaches it.

The helper runs isolated (`python -I`: no module from the working directory, no PYTHON* variable;
this package's directory is the one path added) in `/`, and is killed by the kernel when the
thread that started it (a worker of the daemon's thread pool, alive as long as the daemon) exits.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import subprocess
import sys
import threading
import time
from typing import Any

MAX_EXPRESSION = 4096
TIME_BUDGET = 2.0
MAX_ANSWER = 64 * 1024
VARIABLES = ("predicate", "predicateType", "statement", "image")
# Longest a helper may take to start (interpreter, cel-cpp) and say it is ready.
START_BUDGET = 10.0
# The helper's RLIMIT_CPU (seconds, over its life); it is replaced once it has used half.
CPU_LIMIT = 120
# `python -I -c` adds neither the working directory nor PYTHONPATH: the package's own directory is
# added explicitly (last, so nothing there shadows the standard library), so the helper runs the
# daemon's code wherever it is installed.
_BOOT = "import sys; sys.path.append(sys.argv[1]); from imaged.verify.cel_worker import main; main()"
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


class CelError(ValueError):
    """An expression that does not compile, or an evaluation that did not give `true`'s answer."""


def _first_line(message: str) -> str:
    """cel-cpp's errors: `INVALID_ARGUMENT: ERROR: <input>:1:5: reason\\n | expr\\n | ..^`."""
    text = message.replace("INVALID_ARGUMENT: ", "").replace("ERROR: <input>:", "at ")
    return text.split("\n", 1)[0].strip()


def new_env() -> Any:
    from cel_expr_python import cel

    dyn = cel.Type.DYN
    return cel.NewEnv(
        variables={"predicate": dyn, "predicateType": cel.Type.STRING, "statement": dyn, "image": dyn}
    )


_ENV: Any = None
_ENV_LOCK = threading.Lock()


def compile_policy(expression: str) -> None:
    """Parse and type-check `expression`; raise CelError saying what is wrong."""
    global _ENV
    if not expression.strip():
        raise CelError("the expression is empty")
    if len(expression) > MAX_EXPRESSION:
        raise CelError(f"the expression is {len(expression)} characters, over the {MAX_EXPRESSION} limit")
    try:
        from cel_expr_python import cel
    except ImportError as e:  # a configuration error (refused, logged), not a crash of the loader
        raise CelError(f"the CEL library (cel-expr-python) cannot be loaded: {e}") from None

    with _ENV_LOCK:
        if _ENV is None:
            _ENV = new_env()
        try:
            compiled = _ENV.compile(expression)
        except RuntimeError as e:
            raise CelError(f"not a valid CEL expression: {_first_line(str(e))}") from None
    kind = compiled.return_type()
    if kind not in (cel.Type.BOOL, cel.Type.DYN):
        raise CelError(f"the expression gives {kind.name().lower()}, not bool")


class CelEvaluator:
    """The helper process, one evaluation at a time (verifications call it from worker threads)."""

    def __init__(self, time_budget: float = TIME_BUDGET) -> None:
        self.time_budget = time_budget
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._cpu = 0.0  # CPU seconds the helper has used, as its last answer said

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None and self._cpu > CPU_LIMIT / 2:
            self._kill()  # replaced before its CPU limit kills it during an evaluation
        if self._proc is None or self._proc.poll() is not None:
            self._cpu = 0.0
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOT, str(os.getpid()), str(CPU_LIMIT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                cwd="/",
            )
            # Its start-up (interpreter, cel-cpp) is not an expression's time: the evaluation's
            # clock starts once it says it is ready.
            try:
                ready = self._read_line(self._proc, START_BUDGET)
            except TimeoutError:
                self._kill()
                raise CelError(f"the CEL helper did not start within {START_BUDGET:g}s") from None
            if ready.strip() != b'{"ready": true}':
                self._kill()
                raise CelError("the CEL helper did not start")
        return self._proc

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                if f is not None:
                    f.close()
            self._proc = None

    def evaluate(self, expression: str, variables: dict[str, Any]) -> bool:
        """True when `expression` gives true for `variables`; False when it gives false.

        Raises CelError for an error, a non-bool, or an evaluation over the time budget."""
        request = json.dumps({"expr": expression, "vars": variables}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(request)
                proc.stdin.flush()
                answer = self._read_line(proc, self.time_budget)
            except BrokenPipeError:
                self._kill()
                raise CelError("the CEL helper process exited") from None
            except TimeoutError:
                self._kill()
                raise CelError(
                    f"the policy's evaluation exceeded its time budget of {self.time_budget:g}s"
                ) from None
        try:
            doc = json.loads(answer)
        except ValueError:
            raise CelError("the CEL helper answered garbage") from None
        if not isinstance(doc, dict):
            raise CelError("the CEL helper answered garbage")
        cpu = doc.get("cpu")
        if isinstance(cpu, int | float):
            self._cpu = float(cpu)
        if "error" in doc:
            raise CelError(str(doc["error"]))
        value = doc.get("value")
        if not isinstance(value, bool):
            raise CelError(f"the policy gave {str(doc.get('type', 'a non-bool')).lower()}, not bool")
        return value

    def _read_line(self, proc: subprocess.Popen[bytes], budget: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + budget
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                self._kill()
                raise CelError("the CEL helper process exited during the evaluation (out of memory?)")
            data += chunk
            if len(data) > MAX_ANSWER:
                self._kill()
                raise CelError("the CEL helper's answer is too large")
        return data


_EVALUATOR: CelEvaluator | None = None


def evaluator() -> CelEvaluator:
    """The process's helper (one for the daemon: evaluations are rare, verdicts are cached)."""
    global _EVALUATOR
    if _EVALUATOR is None:
        _EVALUATOR = CelEvaluator()
    return _EVALUATOR


def close_evaluator() -> None:
    """Stop the helper process, if one was started (daemon shutdown)."""
    if _EVALUATOR is not None:
        _EVALUATOR.close()
