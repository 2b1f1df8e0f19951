"""The one error contract of handgen.

Every error that a user can cause (bad arguments, bad input files, an unusable output location, a run that
does not match the folder it resumes, ...) derives from ``HandgenError``. Its message is one line that names
the bad value, file, shard or key, and ``exit_code`` is what the ``hands`` command exits with (2). The command
line catches ``HandgenError`` once; inside Prefect, a ``HandgenError`` is never retried (retrying cannot fix
bad input). ``TransientError`` marks failures that may succeed when tried again (a flaky network store, a
shard whose claim is busy); only those are retried.

Each stage package keeps its own subclass (``ConfigError``, ``SourceError``, ``StoreError``, ...), so callers
can catch narrowly; the CLI and the flows catch the base.
"""

from __future__ import annotations


class HandgenError(Exception):
    """A user-caused error with a one-line message. ``exit_code``: what ``hands`` exits with."""

    exit_code = 2

    def one_line(self) -> str:
        """The message on one line (the first line of ``str(self)``, or the class name when empty)."""
        text = str(self).strip()
        return text.splitlines()[0] if text else type(self).__name__


class TransientError(Exception):
    """A failure that may succeed on a retry (network hiccup, busy claim); Prefect tasks retry only these."""


def one_line(exc: BaseException) -> str:
    """A one-line description of any exception: its message's first line, or its class name."""
    if isinstance(exc, HandgenError):
        return exc.one_line()
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(exc).__name__
