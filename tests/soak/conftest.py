"""The soak suite runs only when asked: `make soak` (`pytest tests/soak --soak`) or IMAGED_SOAK=1.

`--soak` is registered here. pytest calls `pytest_addoption` of a conftest found later during
collection too (the hook is historic), so a plain `pytest` run, which never passes `--soak`,
gets the default and skips; `pytest tests/soak --soak` loads this file before parsing the
command line. Only `pytest --soak` without a path under tests/soak would not know the option.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak", action="store_true", default=False, help="run the long soak suite (tests/soak)"
    )


def soak_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--soak", default=False)) or os.environ.get("IMAGED_SOAK") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if soak_enabled(config):
        return
    skip = pytest.mark.skip(
        reason="soak suite: run `make soak` (pytest tests/soak --soak) or set IMAGED_SOAK=1"
    )
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(skip)


# Lines the soak tests add; printed at the end of the run, passed or not.
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("soak summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)
