"""Pure presentation helpers: sizes, digests, labels and times as talosctl shows them."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Mapping, Sequence

_SI_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


@functools.lru_cache(maxsize=4096)  # aliases of one image repeat its size: thousands of rows, few sizes
def human_size(n: int) -> str:
    """SI size as go-humanize's `Bytes` prints it (what talosctl shows): 999 B, 1.2 kB, 83 MB."""
    if n < 10:
        return f"{max(n, 0)} B"
    exp = min(math.floor(math.log(n) / math.log(1000)), len(_SI_UNITS) - 1)
    value = math.floor(n / 1000**exp * 10 + 0.5) / 10
    return f"{value:.1f} {_SI_UNITS[exp]}" if value < 10 else f"{value:.0f} {_SI_UNITS[exp]}"


def short_digest(digest: str, length: int = 12) -> str:
    """`sha256:` plus the first `length` hex characters; anything unexpected is left whole."""
    algo, sep, hexpart = digest.partition(":")
    if not sep or len(hexpart) <= length:
        return digest
    return f"{algo}:{hexpart[:length]}"


def format_labels(labels: Mapping[str, str], max_value: int | None = None) -> str:
    """Sorted `k=v` pairs joined by commas, the talosctl form; on a terminal, values longer than
    `max_value` end in `…` (a verification message would make the table hundreds of columns wide)."""

    def cut(v: str) -> str:
        return v if max_value is None or len(v) <= max_value else v[: max_value - 1] + "…"

    return ",".join(f"{k}={cut(labels[k])}" for k in sorted(labels))


@functools.lru_cache(maxsize=4096)
def rfc3339(seconds: int, nanos: int = 0) -> str | None:
    """A protobuf timestamp as RFC 3339 in UTC (`2026-01-02T03:04:05Z`, whole seconds as talosctl
    prints them); None when unset."""
    if seconds == 0 and nanos == 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def percent(done: int, total: int) -> float:
    return 100.0 * done / total if total > 0 else 0.0


def table(header: Sequence[str], rows: Iterable[Sequence[str]], padding: int = 3) -> str:
    """Columns aligned like Go's tabwriter (talosctl, ctr): no borders, easy to cut and grep."""
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = []
    for r in all_rows:
        cells = [cell.ljust(widths[i] + padding) for i, cell in enumerate(r[:-1])]
        lines.append(("".join(cells) + r[-1]).rstrip())
    return "\n".join(lines) + "\n"
