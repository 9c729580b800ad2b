"""One exception type for mistakes a user can fix.

Everything the CLI reports as a one-line error is a :class:`RnnopsError`: the message says what
was wrong and how to fix it. Anything else is a bug and keeps its traceback.
"""


class RnnopsError(Exception):
    """A user-facing error: bad input, missing data, unreachable service."""


class Terminated(BaseException):
    """SIGTERM during training (``docker stop``, Kubernetes, a scheduler's preemption): handled
    like Ctrl-C, so the checkpoint is saved and ``--resume`` continues; the CLI exits 143.
    Not a KeyboardInterrupt, which Typer turns into exit 130 before the CLI sees it."""
