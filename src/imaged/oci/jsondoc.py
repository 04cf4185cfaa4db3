"""JSON documents from whoever sent them: registries, archives, signatures."""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads`, with a document nested too deeply for the parser (`[[[[...`, a few hundred
    bytes) reported as the ValueError callers handle for bad JSON, not as a RecursionError that
    would surface as an INTERNAL error."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
