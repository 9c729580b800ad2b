"""One exception type for mistakes a user can fix.

Everything the CLI reports as a one-line error is a :class:`RnnopsError`: the message says what
was wrong and how to fix it. Anything else is a bug and keeps its traceback.
"""


class RnnopsError(Exception):
    """A user-facing error: bad input, missing data, unreachable service."""
