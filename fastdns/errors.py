"""The exception tree and the process exit codes (an API between processes)."""

from __future__ import annotations

import sys
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2  # bad command line or invalid config (check-config)
    BOOT_ERROR = 3  # a worker could not start: halt, never crash-loop (gunicorn WORKER_BOOT_ERROR)
    CRASH_LOOP = 4  # too many worker crashes in a short window


class FastDNSError(Exception):
    """Root of fastdns's own errors."""


class ConfigError(FastDNSError):
    """An invalid config; ``problems`` holds one message per problem, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def report_config_error(e: ConfigError) -> int:
    """Print every problem of ``e`` as one stderr line each; the exit code for it."""
    for problem in e.problems:
        print(f"fastdns: config error: {problem}", file=sys.stderr)
    return ExitCode.USAGE


class BootError(FastDNSError):
    """The server could not start (port in use, permission, ...)."""


class HaltServer(BaseException):
    """Stop the whole service with ``exit_code``; never caught at the application level."""

    def __init__(self, reason: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
