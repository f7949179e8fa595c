"""The error types every job raises: a leaf module that imports nothing of the project.

Library code raises these; the entry point (`cycledrums_cli.main`) catches them once:
a `UserError` prints its message and exits 2, a `JobFailure` prints it and exits 1
(`-v` adds the traceback).  Each job's own error class derives from one of the two,
so no command-line layer has to convert errors.
"""
from __future__ import annotations


class UserError(ValueError):
    """Base of every error a user causes (bad input, option, path, checkpoint...).

    It derives from ValueError so library callers that catch ValueError keep working.
    """


class JobFailure(Exception):
    """The job could not finish for a reason outside the user's input (storage or network
    faults after retries).  Its message names what failed and says that a re-run retries."""


class CliError(UserError):
    """A user-facing error raised by the command-line layer itself."""
