"""The CEL helper process (see verify/cel.py): one JSON request per line on stdin, one answer per
line on stdout. Its address space is limited, so a policy that builds huge values fails here and
not in the daemon; the daemon kills it when an evaluation outlives the time budget."""

from __future__ import annotations

import json
import resource
import sys
from collections import OrderedDict
from typing import Any

MEMORY_LIMIT = 1 << 30
MAX_COMPILED = 64


def _answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass
    from cel_expr_python import cel

    from imaged.verify.cel import _first_line, new_env

    env = new_env()
    compiled: OrderedDict[str, Any] = OrderedDict()
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
