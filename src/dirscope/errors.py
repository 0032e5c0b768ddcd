"""The one exception type for problems a user can fix."""

from __future__ import annotations


class DirscopeError(Exception):
    """A user-facing error: the message says what went wrong and what to do.

    The CLI prints it as a single line and exits with status 2. Any other exception is a bug
    and keeps its traceback.
    """
