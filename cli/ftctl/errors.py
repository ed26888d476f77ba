"""Errors that ftctl reports as one clean message instead of a traceback.

`UserError` is a mistake the user can fix (a bad manifest field, a missing file, a job that does
not exist): exit code 2. `CommandFailed` is a problem outside the user's input (the cluster is
unreachable, training failed): exit code 1. Both carry a message meant to be read as is.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USER_ERROR = 2


class FtctlError(Exception):
    """Base class: `str(err)` is the whole message shown to the user."""

    exit_code = EXIT_FAILED


class UserError(FtctlError):
    """Bad input: the message names the file/field and what is wrong."""

    exit_code = EXIT_USER_ERROR


class CommandFailed(FtctlError):
    """The command could not do its work for a reason outside the user's input."""

    exit_code = EXIT_FAILED
