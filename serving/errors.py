"""What can go wrong with a request, as exceptions the serving parts raise (no HTTP here).

The HTTP layer (:mod:`rnnops.serving.http.errors`) maps each one to a status code and a JSON
body; the batch job and the tests read them as they are. Every message says what to change.
"""

from __future__ import annotations


class Overloaded(Exception):
    """No room for the work now: 429 (a queue or cap is full) or 503 (waited too long, draining,
    not loaded yet), with the seconds a client should wait before retrying."""

    def __init__(self, reason: str, message: str, retry_after: int, status: int = 429):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.status = status


class InputError(ValueError):
    """A request the model cannot take (400); ``field`` names the part of the body at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownModel(LookupError):
    """A model name this server does not serve (404)."""


class UnknownSession(KeyError):
    """A forecast session id that is closed, expired or was never opened here (404)."""


class SessionModelGone(LookupError):
    """A session opened on a model version this server no longer serves (409: open a new one)."""
