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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnops.serving import timeseries
from rnnops.serving.batch.read import feature_matrix, parse_dates
from rnnops.serving.timeseries import ts

if TYPE_CHECKING:
    from rnnops.serving.batch.job import Layout

NAT = np.iinfo(np.int64).min  # numpy's NaT as int64 nanoseconds
NONE = NAT + 1  # "no timestamp yet" for a series (never a real date: year 1677)


@dataclass
class Prepared:
    """What :meth:`SeriesTails.finish` hands to the forecasting step."""

    ids: list  # valid series, in order of first appearance
    first_pos: np.ndarray  # int64 position of each valid series' first row (the output order)
    windows: np.ndarray  # float32 [m, lookback, F]
    window_dates: np.ndarray  # int64 ns [m, lookback]
    future: np.ndarray  # int64 ns [m, horizon]
    errors: list  # (id, rows, message, first_pos) in order of first appearance
    mismatch: np.ndarray  # bool [m]: spaced unlike the model's training data (a warning, not an error)

    @property
    def freq_mismatch(self) -> int:
        return int(self.mismatch.sum())


class SeriesTails:
    """Per-series streaming state; feed Arrow batches in file order, then :meth:`finish`.

    Rows of a series must come in increasing time order (series may interleave and span
    chunks); the first problem in a series (in file order) is its error and the rest of its rows
    are ignored.
    """

    def __init__(self, layout: Layout, capacity: int = 1024):
        self.layout = layout
        self.L = layout.lookback
        self.F = len(layout.features)
        self.index: dict = {}  # series id -> gid (position of first appearance)
        self.ids: list = []
        self._alloc(capacity)
        self.messages: dict[int, str] = {}  # gid -> the series' error
        self.rows = 0

    def _alloc(self, cap: int) -> None:
        L, F = self.L, self.F
        old = getattr(self, "cap", 0)
        new = {
            "tails": np.zeros((cap, L, F), np.float32),
            "tdates": np.zeros((cap, L), np.int64),
            "wptr": np.zeros(cap, np.int64),
            "count": np.zeros(cap, np.int64),
            "last": np.full(cap, NONE, np.int64),
            "failed": np.zeros(cap, bool),
            "first": np.zeros(cap, np.int64),
        }
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)
        self.cap = cap

    @property
    def series(self) -> int:
        return len(self.ids)

    def _gids(self, batch: pa.RecordBatch, n: int) -> np.ndarray:
        col = self.layout.id_column
        if col is None:
            if not self.ids:
                self._new_gid(None)
            return np.zeros(n, np.int64)
        arr = batch.column(col)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        local = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        lookup = np.array([self.index[u] if u in self.index else self._new_gid(u)
                           for u in enc.dictionary.to_pylist()], dtype=np.int64)
        return lookup[local] if len(lookup) else local

    def _new_gid(self, key) -> int:
        gid = len(self.ids)
        if gid >= self.cap:
            self._alloc(self.cap * 2)
        self.index[key] = gid
        self.ids.append(key)
        if key is None and self.layout.id_column is not None:
            self.failed[gid] = True  # rows without an id: reported, never forecast
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
        new = self.count[gids] == 0
        self.first[gids[new]] = positions[order[starts[new]]]
        self.count[gids] += sizes

        prev = np.empty(n, np.int64)
        prev[1:] = d[:-1]
        prev[starts] = self.last[gids]
        bad_date = d == NAT
        backwards = ~bad_date & (prev != NONE) & (prev != NAT) & (d <= prev)
        dead = np.repeat(self.failed[gids], sizes)
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
                    msg = (f"timestamps go back: {ts(d[r])} comes after {ts(prev[r])} (sort the rows of each "
                           "series by time" + ("" if self.layout.id_column else "; or is this several series? "
                                               "name the id column with --id-column") + ")")
                self.messages[gid] = msg
                self.failed[gid] = True

        alive = ~self.failed[gids]
        if not alive.any():
            return
        gids_a, starts_a, ends_a = gids[alive], starts[alive], ends[alive]
        take = np.minimum(ends_a - starts_a, self.L)  # only the last lookback rows of each series matter
        # ring-buffer slots: row j of the k taken (oldest first) goes to (wptr + j) % L
        rows = _ranges(ends_a - take, take)
        owner = np.repeat(gids_a, take)
        j = rows - np.repeat(ends_a - take, take)
        slot = (self.wptr[owner] + j) % self.L
        vals = feature_matrix(batch.select(list(self.layout.features)).take(pa.array(order[rows])), self.layout.features)
        self.tails[owner, slot] = vals
        self.tdates[owner, slot] = d[rows]
        self.wptr[gids_a] = (self.wptr[gids_a] + take) % self.L
        self.last[gids_a] = d[ends_a - 1]

    def error_list(self) -> list:
        return [(self.ids[g], int(self.count[g]), m, int(self.first[g])) for g, m in sorted(self.messages.items())]

    def finish(self) -> Prepared:
        """Check each series' window (length, NaN, spacing) and build windows + future timestamps."""
        lay, L, n = self.layout, self.L, self.series
        messages = dict(self.messages)
        if lay.id_column is not None and None in self.index:
            g = self.index[None]
            messages[g] = f"{int(self.count[g])} rows have no {lay.id_column}"
        alive = np.flatnonzero(~self.failed[:n])
        short = alive[self.count[alive] < L]
        for g in short:
            messages[int(g)] = f"only {int(self.count[g])} rows; the model reads the last {L}"
        alive = alive[self.count[alive] >= L]

        idx = (self.wptr[alive, None] + np.arange(L)) % L  # oldest first
        windows = self.tails[alive[:, None], idx]
        wdates = self.tdates[alive[:, None], idx]
        finite = np.isfinite(windows).all(axis=(1, 2))
        for k in np.flatnonzero(~finite):
            t, f = np.argwhere(~np.isfinite(windows[k]))[0]
            what = "missing (NaN)" if np.isnan(windows[k, t, f]) else f"{windows[k, t, f]}"
            messages[int(alive[k])] = (f"{lay.features[f]} is {what} at {ts(wdates[k, t])}, within the last {L} rows "
                                       "that the model reads")

        # Future timestamps of the complete windows (serving/timeseries.py: the same rules as /forecast).
        ok = finite.copy()
        future = np.zeros((len(alive), lay.horizon), np.int64)
        mismatch = np.zeros(len(alive), bool)
        fin = np.flatnonzero(finite)
        future[fin], ok[fin], time_errors, mismatch[fin] = timeseries.future_many(
            wdates[fin], lay.horizon, freq=lay.freq, model_freq=lay.model_freq)
        for k, message in time_errors.items():
            messages[int(alive[fin[k]])] = message

        keep = alive[ok]
        errors = [(self.ids[g], int(self.count[g]), m, int(self.first[g])) for g, m in sorted(messages.items())]
        return Prepared(ids=[self.ids[g] for g in keep], first_pos=self.first[keep].copy(),
                        windows=np.ascontiguousarray(windows[ok]), window_dates=wdates[ok], future=future[ok],
                        errors=errors, mismatch=mismatch[ok])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)
