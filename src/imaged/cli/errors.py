"""The one way imagectl fails: a single line on stderr and a documented exit status."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the daemon refused or failed the operation (or, for verify: not verified)
EXIT_USAGE = 2  # bad arguments, unreadable input, daemon unreachable (verify: any error)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class CliError(Exception):
    """Ends the command with `imagectl: <message>` on stderr and exit status `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def one_line(text: str) -> str:
    """Collapse whitespace so an error never spans lines (gRPC details may carry newlines)."""
    return " ".join(text.split())


def redact(text: str, secrets: set[str]) -> str:
    """Hide secrets (passwords) that a server message might echo back."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text
