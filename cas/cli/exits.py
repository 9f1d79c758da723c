"""The CLI's exit codes (docs/cli.md) and the exceptions that carry them to ``main``."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NODE = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
EXIT_TERMINATED = 143


class CliError(Exception):
    """An error shown as one line ``cas: MESSAGE`` with exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class StdoutClosed(Exception):
    """stdout is a pipe whose reader went away: exit quietly."""


class Terminated(BaseException):
    """SIGTERM: unwinds like KeyboardInterrupt so partial downloads are removed."""
