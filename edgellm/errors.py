"""Expected failures: each carries one readable line for the user and an exit code."""

from __future__ import annotations


class EdgeError(Exception):
    """A failure the user can act on. The CLI prints `edgellm: <message>` and exits with `exit_code`."""

    exit_code = 1


class UsageError(EdgeError):
    """Bad arguments or input files."""

    exit_code = 2


class NotEnoughSpace(EdgeError):
    """Disk or memory too small for the work asked."""

    exit_code = 3


class Interrupted(EdgeError):
    """Ctrl-C during work that the same command resumes: the message says what was under way."""

    exit_code = 130
