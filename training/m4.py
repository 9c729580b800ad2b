"""The M4 competition's Hourly subset as a panel: the named dataset ``m4-hourly``.

The organisers publish each subset as two wide CSVs (github Mcompetitions/M4-methods,
``Dataset/Train/Hourly-train.csv`` and ``Dataset/Test/Hourly-test.csv``): one row per series,
``V1`` the id (``H1`` ... ``H414``), then the values, padded with empty cells (the hourly series
have 700 or 960 training values and 48 test values). Both files are registered in
:data:`rnnops.training.data.DATASETS` (``m4-hourly-train``, ``m4-hourly-test``) with their
sha256, so they come from ``RNNOPS_DATA_DIR/m4/``, the cache, or a download.

:func:`load_m4_hourly` turns them into the long format every panel uses (``id``, ``timestamp``,
``value``) plus a ``split`` column (``train`` / ``test``) that keeps the official split.

**Timestamps are synthetic.** M4 publishes no usable dates for its hourly series, so every
series starts at :data:`M4_ORIGIN` (1970-01-01 00:00) and steps hourly. Calendar features
computed from these timestamps therefore encode the position in a 24-hour (and 168-hour) cycle
counted from each series' first value, not the true hour of day; that is consistent across train
and test, which is all the benchmark needs.

The published results (the organisers' results file; see ``shared/data/README.md``) are in
:data:`M4_HOURLY_ANCHORS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnops.errors import RnnopsError

NAME = "m4-hourly"
TRAIN_DATASET, TEST_DATASET = "m4-hourly-train", "m4-hourly-test"
HORIZON = 48
FREQ = "h"
SEASON = 24
M4_ORIGIN = np.datetime64("1970-01-01T00:00", "ns")

# Published M4 Hourly results (the organisers' "Evaluation and Ranks.xlsx"): (sMAPE, MASE, OWA,
# MSIS or None). Its OWA is computed from the rounded sMAPE and MASE.
M4_HOURLY_ANCHORS: dict[str, tuple[float, float, float, float | None]] = {
    "Naive": (43.003, 11.608, 3.593, 71.245),
    "Naive2": (18.383, 2.395, 1.000, None),
    "sNaive": (13.912, 1.193, 0.627, None),
    "Smyl (ES-RNN, M4 winner)": (9.328, 0.893, 0.440, 7.928),
    "Doornik et al. (best hourly)": (8.913, 0.801, 0.410, 6.139),
}


@dataclass(frozen=True)
class M4Panel:
    """M4 Hourly in long format, sorted by series then time.

    ``frame``: columns ``id`` (str), ``timestamp`` (datetime64[ns], synthetic: see the module
    docstring), ``value`` (float64), ``split`` (``train`` | ``test``)."""

    frame: object  # pandas.DataFrame (pandas is imported lazily)
    ids: tuple[str, ...]
    horizon: int = HORIZON
    freq: str = FREQ
    season: int = SEASON

    def insample(self) -> list[np.ndarray]:
        """Each series' training values, in ``ids`` order (lengths differ)."""
        train = self.frame[self.frame["split"] == "train"]
        groups = train.groupby("id", sort=False)["value"]
        return [g.to_numpy(np.float64) for _, g in groups]

    def test_values(self) -> np.ndarray:
        """The official test values, ``[series, horizon]`` in ``ids`` order."""
        test = self.frame[self.frame["split"] == "test"]
        return test["value"].to_numpy(np.float64).reshape(len(self.ids), self.horizon)


def _read_wide(path: Path) -> tuple[list[str], list[np.ndarray]]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"V1": str})
    except Exception as exc:  # pandas raises many types for unreadable CSVs
        raise RnnopsError(f"cannot read {path} as an M4 CSV: {exc}") from None
    if df.columns[0] != "V1":
        raise RnnopsError(f"{path} is not an M4 file: its first column is {df.columns[0]!r}, not 'V1' (the series id)")
    ids = df["V1"].tolist()
    values = df.iloc[:, 1:].to_numpy(np.float64)
    rows = []
    for sid, row in zip(ids, values):
        n = int(np.isfinite(row).sum())
        # The padding is trailing; a hole inside a series would mean a damaged file.
        if n and not np.isfinite(row[:n]).all():
            raise RnnopsError(f"{path}: series {sid} has an empty cell before its last value; the file is damaged")
        rows.append(row[:n])
    return ids, rows


def from_wide(train_path: Path, test_path: Path) -> M4Panel:
    """The long panel of an M4 train/test pair of wide CSVs (any M4 subset's files with hourly
    spacing; the frequency and season here are Hourly's)."""
    import pandas as pd

    train_ids, train = _read_wide(Path(train_path))
    test_ids, test = _read_wide(Path(test_path))
    if train_ids != test_ids:
        raise RnnopsError(f"{train_path} and {test_path} list different series; use the two files of one M4 subset")
    bad = [sid for sid, t in zip(test_ids, test) if len(t) != HORIZON]
    if bad:
        raise RnnopsError(
            f"{test_path}: series {bad[0]} has {len(test[test_ids.index(bad[0])])} test values, "
            f"not {HORIZON} ({len(bad)} such series)"
        )
    lengths = np.array([len(a) + len(b) for a, b in zip(train, test)])
    n_train = np.array([len(a) for a in train])
    # Position within each series, 0 at its first value (vectorised: no Python loop per row).
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(int(lengths.sum())) - starts
    values = np.concatenate([np.concatenate([a, b]) for a, b in zip(train, test)])
    frame = pd.DataFrame(
        {
            "id": np.repeat(np.array(train_ids, dtype=object), lengths),
            "timestamp": M4_ORIGIN + position.astype("timedelta64[h]"),
            "value": values,
            "split": np.where(position < np.repeat(n_train, lengths), "train", "test"),
        }
    )
    return M4Panel(frame, tuple(train_ids))


def load_m4_hourly() -> M4Panel:
    """M4 Hourly (414 series, horizon 48) in long format, from ``RNNOPS_DATA_DIR/m4/``, the cache,
    or downloaded (sha256-checked either way)."""
    from rnnops.training.data import fetch

    return from_wide(fetch(TRAIN_DATASET), fetch(TEST_DATASET))
