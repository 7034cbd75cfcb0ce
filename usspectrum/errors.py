"""Exceptions that carry a message for the user.

The CLI turns :class:`UsageError` into exit code 2 and any other
:class:`USSpectrumError` into exit code 1, printing the message on one line.
"""
import sys


def note(message: str) -> None:
    """A one-line remark for the user on standard error: what was chosen
    for them, or what was repaired."""
    print(f"Note: {message}", file=sys.stderr, flush=True)


class USSpectrumError(Exception):
    """A problem the user can fix; the message says what and how."""


class UsageError(USSpectrumError, ValueError):
    """Bad input: a malformed option, a value out of range, a wrong name."""
