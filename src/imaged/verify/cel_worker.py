"""The CEL helper process (see verify/cel.py): one JSON request per line on stdin, one answer per
line on stdout. Its address space and CPU time are limited, so a policy that builds huge values
fails here and not in the daemon; the daemon kills it when an evaluation outlives the time budget,
and the kernel when the daemon's thread that started it is gone (PR_SET_PDEATHSIG: cel-cpp holds
the GIL while it evaluates, so no thread of ours could notice).

Started as `python -I -c <boot> <package dir> <daemon pid> <CPU limit>` (cel.py)."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from collections import OrderedDict
from typing import Any

MEMORY_LIMIT = 1 << 30
MAX_COMPILED = 64
PR_SET_PDEATHSIG = 1


def _answer(doc: dict[str, Any]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    doc["cpu"] = round(usage.ru_utime + usage.ru_stime, 3)  # the daemon replaces a helper near its limit
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _die_with(parent: int) -> None:
    """SIGKILL when the parent goes; exit now if it went before this was set (its pid is not ours
    to check against any more: we were reparented)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _limit(kind: int, soft: int, hard: int) -> None:
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        pass


def main() -> None:
    if len(sys.argv) >= 4:
        _die_with(int(sys.argv[2]))
        cpu = int(sys.argv[3])
        _limit(resource.RLIMIT_CPU, cpu, cpu + 5)  # SIGXCPU at the soft limit, SIGKILL at the hard
    _limit(resource.RLIMIT_AS, MEMORY_LIMIT, MEMORY_LIMIT)
    from cel_expr_python import cel

    from imaged.verify.cel import _first_line, new_env

    env = new_env()
    compiled: OrderedDict[str, Any] = OrderedDict()
    sys.stdout.write('{"ready": true}\n')  # the daemon times evaluations from here
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            expression = request["expr"]
            program = compiled.get(expression)
            if program is None:
                program = compiled[expression] = env.compile(expression)
                if len(compiled) > MAX_COMPILED:
                    compiled.popitem(last=False)
            result = program.eval(data=request["vars"])
        except MemoryError:
            _answer({"error": "the policy's evaluation ran out of memory"})
            continue
        except RecursionError:
            _answer({"error": "the input is nested too deeply"})
            continue
        except Exception as e:  # compile or evaluation errors, unconvertible input
            _answer({"error": f"evaluation failed: {_first_line(str(e))}"})
            continue
        kind = result.type()
        if kind == cel.Type.ERROR:
            _answer({"error": f"evaluation failed: {_first_line(str(result.value()))}"})
        elif kind == cel.Type.BOOL:
            _answer({"value": bool(result.value())})
        else:
            _answer({"type": kind.name()})


if __name__ == "__main__":
    main()
