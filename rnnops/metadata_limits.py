"""Bounds on what a model's metadata may hold, and the checks of its names: the part of the
contract that ``rnnops.contract`` and ``rnnops.panel_contract`` both build on (here, so that
neither imports the other in a cycle). A model's metadata is untrusted input: its names reach
logs, JSON answers and the playground, which shows them as text (docs/security.md). Any printable
text is a valid name (a CSV's column is the user's own); control characters and unbounded
lengths or counts are not. ``rnnops.contract`` re-exports every name here.
"""

from __future__ import annotations

from rnnops.errors import RnnopsError

MAX_NAME_CHARS = 200  # a feature, target, covariate or state tensor name; also cell, freq, run id...
MAX_NAMES = 4096  # names in one list (features, targets, covariates, state tensors)
MAX_VOCAB = 1 << 16
MAX_DIM = 1 << 20  # layers, hidden size, lookback, horizon, one state dimension
MAX_STATE_ELEMENTS = 1 << 26  # per row of one state tensor: what serving allocates per stream


class MetadataError(RnnopsError):
    """Model metadata that breaks the contract; the message names the field, in one line."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(field: str, value: object) -> str:
    """``value`` if it is a printable string of 1..MAX_NAME_CHARS characters, else MetadataError."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS or not value.isprintable():
        raise MetadataError(
            f"{field} must be a printable string of 1-{MAX_NAME_CHARS} characters (no control "
            f"characters), not {_shown(value)}"
        )
    return value


def check_names(field: str, values: object) -> list[str]:
    if not isinstance(values, (list, tuple)) or len(values) > MAX_NAMES:
        raise MetadataError(f"{field} must be a list of at most {MAX_NAMES} names, not {_shown(values)}")
    return [check_name(f"{field}[{i}]", v) for i, v in enumerate(values)]
