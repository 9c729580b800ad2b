"""Per-series streaming state of a batch job (:class:`SeriesTails`) and what it hands to the
forecasting step (:class:`Prepared`).

Per series: the last ``lookback`` rows (a ring buffer of values and timestamps), the rows seen,
the last timestamp and the first error. Input arrives as Arrow record batches in any chunking;
a series may span chunks and series may interleave. Memory is ``series x lookback x (features +
1) x ~4-8 bytes``, independent of the number of rows: a file far larger than RAM streams through.
:meth:`SeriesTails.finish` checks the window each series' model reads and builds the windows and
the future timestamps. Both engines (local and Spark) feed their rows through it, so they give
the same rows, the same errors and the same order.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnops import timeseries
from rnnops.serving.batch.read import feature_matrix, parse_dates
from rnnops.timeseries import ts

if TYPE_CHECKING:
    from rnnops.serving.batch.job import Layout

NAT = np.iinfo(np.int64).min  # numpy's NaT as int64 nanoseconds
NONE = NAT + 1  # "no timestamp yet" for a series (never a real date: year 1677)


@dataclass(frozen=True)
class SeriesError:
    """Why one series is not forecast (a line of the error report)."""

    series_id: object  # the id as read (None: rows without an id, or the whole file without --id-column)
    rows: int  # rows of the series in the input
    message: str
    first_pos: int  # position of its first row (orders the report like the output: first appearance)


@dataclass
class Prepared:
    """What :meth:`SeriesTails.finish` hands to the forecasting step: the series that can be
    forecast (one row each in the arrays) and the errors of the others."""

    ids: list[Hashable]  # valid series, in order of first appearance
    first_pos: np.ndarray  # int64 position of each valid series' first row (the output order)
    rows: np.ndarray  # int64 rows of each valid series in the input
    windows: np.ndarray  # float32 [m, lookback, F] (Spark without --plot: [m, 0, F])
    window_dates: np.ndarray  # int64 ns [m, lookback] (Spark without --plot: [m, 0])
    future: np.ndarray  # int64 ns [m, horizon]
    errors: list[SeriesError]  # in order of first appearance
    mismatch: np.ndarray  # bool [m]: spaced unlike the model's training data (a warning, not an error)

    @property
    def freq_mismatch(self) -> int:
        return int(self.mismatch.sum())


class SeriesTails:
    """Per-series streaming state; feed Arrow batches in file order, then :meth:`finish`.

    Rows of a series must come in increasing time order (series may interleave and span
    chunks); the first problem in a series (in file order) is its error and the rest of its rows
    are ignored. The public surface is :meth:`feed`, :meth:`finish`, :meth:`errors`,
    :attr:`has_errors`, :attr:`rows` and :attr:`series`; the per-series arrays are private (they
    grow by doubling and hold ring buffers).
    """

    # the per-series arrays, indexed by gid (set by _alloc, which grows them by doubling)
    _tails: np.ndarray  # float32 [cap, L, F]: ring buffers of the last L rows
    _tdates: np.ndarray  # int64 ns [cap, L]: their timestamps
    _wptr: np.ndarray  # int64 [cap]: next write position in the ring
    _count: np.ndarray  # int64 [cap]: rows seen
    _last: np.ndarray  # int64 ns [cap]: the last timestamp (NONE before the first row)
    _failed: np.ndarray  # bool [cap]: the series has an error
    _first: np.ndarray  # int64 [cap]: position of its first row
    _cap: int

    def __init__(self, layout: Layout, capacity: int = 1024) -> None:
        self.layout = layout
        self.L = layout.lookback
        self.F = len(layout.features)
        self._index: dict[Hashable, int] = {}  # series id -> gid (position of first appearance)
        self._ids: list[Hashable] = []
        self._alloc(capacity)
        self._messages: dict[int, str] = {}  # gid -> the series' error
        self.rows = 0  # rows fed

    def _alloc(self, cap: int) -> None:
        L, F = self.L, self.F
        old = getattr(self, "_cap", 0)
        new: dict[str, np.ndarray] = {
            "_tails": np.zeros((cap, L, F), np.float32),
            "_tdates": np.zeros((cap, L), np.int64),
            "_wptr": np.zeros(cap, np.int64),
            "_count": np.zeros(cap, np.int64),
            "_last": np.full(cap, NONE, np.int64),
            "_failed": np.zeros(cap, bool),
            "_first": np.zeros(cap, np.int64),
        }
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)
        self._cap = cap

    @property
    def series(self) -> int:
        return len(self._ids)

    def _gids(self, batch: pa.RecordBatch, n: int) -> np.ndarray:
        col = self.layout.id_column
        if col is None:
            if not self._ids:
                self._new_gid(None)
            return np.zeros(n, np.int64)
        arr = batch.column(col)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        local = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        lookup = np.array(
            [self._index[u] if u in self._index else self._new_gid(u) for u in enc.dictionary.to_pylist()],
            dtype=np.int64,
        )
        return lookup[local] if len(lookup) else local

    def _new_gid(self, key: Hashable) -> int:
        gid = len(self._ids)
        if gid >= self._cap:
            self._alloc(self._cap * 2)
        self._index[key] = gid
        self._ids.append(key)
        if key is None and self.layout.id_column is not None:
            self._failed[gid] = True  # rows without an id: reported, never forecast
        return gid

    def feed(self, batch: pa.RecordBatch, positions: np.ndarray) -> None:
        """Take one chunk. ``positions``: int64, increasing in file order (row numbers locally,
        Spark's ``monotonically_increasing_id`` there); they order the output and the errors."""
        n = batch.num_rows
        if n == 0:
            return
        self.rows += n
        gl = self._gids(batch, n)
        dates = parse_dates(batch.column(self.layout.date_column), self.layout.date_format)
        order = np.argsort(gl, kind="stable")  # rows of a series together, in file order
        g, d = gl[order], dates[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], n]
        gids = g[starts]
        sizes = ends - starts
        new = self._count[gids] == 0
        self._first[gids[new]] = positions[order[starts[new]]]
        self._count[gids] += sizes

        prev = np.empty(n, np.int64)
        prev[1:] = d[:-1]
        prev[starts] = self._last[gids]
        bad_date = d == NAT
        backwards = ~bad_date & (prev != NONE) & (prev != NAT) & (d <= prev)
        dead = np.repeat(self._failed[gids], sizes)
        viol = (bad_date | backwards) & ~dead
        if viol.any():
            rows = np.flatnonzero(viol)
            _, first = np.unique(g[rows], return_index=True)
            raw = batch.column(self.layout.date_column)
            for r in rows[first]:
                gid = int(g[r])
                if bad_date[r]:
                    value = raw[int(order[r])].as_py()
                    msg = "a row has no date" if value is None else f"unparsable date {str(value)!r}"
                elif d[r] == prev[r]:
                    msg = f"timestamp {ts(d[r])} repeats (one row per series and timestamp)"
                else:
                    msg = (
                        f"timestamps go back: {ts(d[r])} comes after {ts(prev[r])} (sort the rows of each "
                        "series by time"
                        + (
                            ""
                            if self.layout.id_column
                            else "; or is this several series? name the id column with --id-column"
                        )
                        + ")"
                    )
                self._messages[gid] = msg
                self._failed[gid] = True

        alive = ~self._failed[gids]
        if not alive.any():
            return
        gids_a, starts_a, ends_a = gids[alive], starts[alive], ends[alive]
        take = np.minimum(ends_a - starts_a, self.L)  # only the last lookback rows of each series matter
        # ring-buffer slots: row j of the k taken (oldest first) goes to (wptr + j) % L
        rows = _ranges(ends_a - take, take)
        owner = np.repeat(gids_a, take)
        j = rows - np.repeat(ends_a - take, take)
        slot = (self._wptr[owner] + j) % self.L
        vals = feature_matrix(
            batch.select(list(self.layout.features)).take(pa.array(order[rows])), self.layout.features
        )
        self._tails[owner, slot] = vals
        self._tdates[owner, slot] = d[rows]
        self._wptr[gids_a] = (self._wptr[gids_a] + take) % self.L
        self._last[gids_a] = d[ends_a - 1]

    @property
    def has_errors(self) -> bool:
        """Has a series failed while streaming (bad date, duplicate, disorder)?"""
        return bool(self._messages)

    def errors(self) -> list[SeriesError]:
        """The series that failed while streaming, in order of first appearance (:meth:`finish`
        adds the window checks)."""
        return self._error_list(self._messages)

    def _error_list(self, messages: dict[int, str]) -> list[SeriesError]:
        return [
            SeriesError(self._ids[g], int(self._count[g]), m, int(self._first[g])) for g, m in sorted(messages.items())
        ]

    def finish(self) -> Prepared:
        """Check each series' window (length, NaN, spacing) and build windows + future timestamps."""
        lay, L, n = self.layout, self.L, self.series
        messages = dict(self._messages)
        if lay.id_column is not None and None in self._index:
            g = self._index[None]
            messages[g] = f"{int(self._count[g])} rows have no {lay.id_column}"
        alive = np.flatnonzero(~self._failed[:n])
        short = alive[self._count[alive] < L]
        for g in short:
            messages[int(g)] = f"only {int(self._count[g])} rows; the model reads the last {L}"
        alive = alive[self._count[alive] >= L]

        idx = (self._wptr[alive, None] + np.arange(L)) % L  # oldest first
        windows = self._tails[alive[:, None], idx]
        wdates = self._tdates[alive[:, None], idx]
        finite = np.isfinite(windows).all(axis=(1, 2))
        for k in np.flatnonzero(~finite):
            t, f = np.argwhere(~np.isfinite(windows[k]))[0]
            what = "missing (NaN)" if np.isnan(windows[k, t, f]) else f"{windows[k, t, f]}"
            messages[int(alive[k])] = (
                f"{lay.features[f]} is {what} at {ts(wdates[k, t])}, within the last {L} rows that the model reads"
            )

        # Future timestamps of the complete windows (rnnops/timeseries.py: the same rules as /forecast).
        ok = finite.copy()
        future = np.zeros((len(alive), lay.horizon), np.int64)
        mismatch = np.zeros(len(alive), bool)
        fin = np.flatnonzero(finite)
        future[fin], ok[fin], time_errors, mismatch[fin] = timeseries.future_many(
            wdates[fin], lay.horizon, freq=lay.freq, model_freq=lay.model_freq
        )
        for j, message in time_errors.items():
            messages[int(alive[fin[j]])] = message

        keep = alive[ok]
        return Prepared(
            ids=[self._ids[g] for g in keep],
            first_pos=self._first[keep].copy(),
            rows=self._count[keep].copy(),
            windows=np.ascontiguousarray(windows[ok]),
            window_dates=wdates[ok],
            future=future[ok],
            errors=self._error_list(messages),
            mismatch=mismatch[ok],
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)
