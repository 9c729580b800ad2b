"""Panels larger than memory: a Parquet panel (one file, or a directory of files) indexed in one
streaming pass and read back a few series at a time.

- **The index** (:func:`index_panel` -> :class:`PanelIndex`): one pass over the files' Arrow record
  batches, a block of whole series at a time, each block checked by the in-memory reader's own
  :func:`rnnops.training.panel.check_panel` (so every bad input is the same one line, naming the
  file and its row). What stays in memory is per series only: its id, file, first row and row
  count, its length on the frequency's grid, and its static values (about 100 bytes a series:
  100,000 series are ~10 MB). The panel's frequency is the in-memory reader's inference on the
  first block (or ``--freq``); the "no series long enough" check runs on the whole index at the end.
- **What streaming asks of the file**: each series' rows together (sorted by id, then date, as
  Spark, Dask, and the generator in ``benchmarks/retail_panel.py`` write them), in one file. A
  series whose rows come back later is one line naming it. Where a problem is counted ("3
  duplicate rows"), the count is that of the block where the pass stopped, not of the whole panel:
  the pass fails at the first bad block rather than read 100 GB to count.
- **Reading series back** (:meth:`PanelIndex.load`): the row groups that hold them, only the role
  columns, checked again and laid out as an in-memory :class:`~rnnops.training.panel.Panel` of just
  those series (static columns with the whole panel's vocabularies), which the training code cuts
  windows from as it does for any panel.
- **Training windows** (:class:`StreamSampler`): the series are cut into chunks of consecutive
  series (about ``chunk_rows`` rows each); a buffer holds ``buffer_chunks`` chunks drawn at random
  across files and is used for ``steps_per_buffer`` steps, while a background thread reads the
  next buffer. Each step draws ``batch_size`` series uniformly among the buffer's, then an origin
  as the in-memory sampler does. Every chunk is used once per pass over the shard, in a seeded
  random order. Memory: two buffers, whatever the panel's size.

pyarrow and pandas only here (no torch): :mod:`rnnops.training.panel_stream_task` is the training task.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rnnops.errors import RnnopsError
from rnnops.training.panel import (
    BATCH_ROWS,
    PARQUET_SUFFIXES,
    Panel,
    PanelSpec,
    StaticColumn,
    _check_columns,
    _Codes,
    _readable_columns,
    _unique_roles,
    check_panel,
    panel_files,
)

# --stream by default when reading the panel into memory would take more than this share of the
# memory available now. The in-memory reader peaks at about 175 bytes a row (docs/forecasting.md:
# 1.9 M rows, 330 MB above the interpreter), and training adds its windows' known inputs.
IN_MEMORY_BYTES_PER_ROW = 200
STREAM_ABOVE_MEMORY_SHARE = 0.5
LOAD_BLOCK_ROWS = 1 << 17  # rows read back and checked at a time (pandas holds their ids as Python strings)


def parquet_rows(source) -> int | None:
    """Rows of a Parquet panel (a file or a directory of files) from the files' footers, or None
    when ``source`` is not Parquet (a CSV, a named panel)."""
    path = Path(source).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() in PARQUET_SUFFIXES)):
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in panel_files(path))
    except RnnopsError:
        raise
    except Exception:  # unreadable: the reader says why in one line
        return None


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil; a cgroup limit where it is lower)."""
    import psutil

    free = psutil.virtual_memory().available
    try:  # in a container, the cgroup's limit may be far below the machine's memory
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text().strip())
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        free = min(free, limit - used)
    except (OSError, ValueError):  # no cgroup v2 limit ("max"), or not Linux
        pass
    return free


def should_stream(source) -> bool:
    """Whether ``rnnops train forecast`` streams ``source`` when ``--stream``/``--no-stream`` is not
    given: a Parquet panel whose in-memory form would take more than half the available memory."""
    rows = parquet_rows(source)
    return rows is not None and rows * IN_MEMORY_BYTES_PER_ROW > STREAM_ABOVE_MEMORY_SHARE * available_memory()


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class PanelIndex:
    """What a streamed panel keeps in memory: per series (in file order) its id, where its rows are,
    its length, its static values. Has a :class:`Panel`'s ``spec``, ``freq``, ``season``, ``ids``,
    ``lengths``, ``static``, ``calendar_names``, ``too_short``, ``splits()``, ``backtest()`` and
    ``summary()``, without the values; :meth:`load` reads series back as a :class:`Panel`."""

    spec: PanelSpec
    freq: str
    season: int
    files: tuple[Path, ...]
    row_groups: tuple[np.ndarray, ...]  # per file: the first row of each row group, then the row count
    ids: tuple[str, ...]
    file: np.ndarray  # int32 [series]: index into files
    start: np.ndarray  # int64 [series]: the series' first row in its file
    rows: np.ndarray  # int64 [series]: its rows in the file
    lengths: np.ndarray  # int64 [series]: its steps (gaps filled as missing with --freq)
    static: tuple[StaticColumn, ...]  # values per series, vocabularies of the whole panel
    calendar_names: tuple[str, ...]
    too_short: tuple[str, ...]
    filled_gaps: int = 0
    missing_targets: int = 0
    source: str = ""

    # The same as a Panel's: they read only the lengths, the spec and the counts above.
    n_series = Panel.n_series
    splits = Panel.splits
    backtest = Panel.backtest
    summary = Panel.summary

    def chunks(self, series: np.ndarray, rows: int) -> list[np.ndarray]:
        """``series`` (ascending indices) cut into runs of consecutive ones of about ``rows`` rows,
        never across files: what one read of a file's row groups returns."""
        series = np.asarray(series, np.int64)
        out, current, size = [], [], 0
        for i in series:
            if current and (size + self.rows[i] > rows or self.file[i] != self.file[current[-1]]):
                out.append(np.array(current, np.int64))
                current, size = [], 0
            current.append(int(i))
            size += int(self.rows[i])
        if current:
            out.append(np.array(current, np.int64))
        return out

    def load(self, series, block_rows: int = LOAD_BLOCK_ROWS) -> Panel:
        """Series ``series`` (indices, any order; returned in ascending order) read from their files
        and checked, ``block_rows`` rows at a time (what pandas holds as Python objects at once): a
        :class:`Panel` of just them, whose static columns hold the whole panel's codes."""
        series = np.unique(np.asarray(series, np.int64))
        if not len(series):
            raise ValueError("no series to load")
        return _concat([self._load_block(block) for block in self.chunks(series, block_rows)])

    def _load_block(self, series: np.ndarray) -> Panel:
        import pyarrow as pa

        columns = [c for c, _ in _unique_roles(self.spec)]
        pieces = []
        for f in np.unique(self.file[series]):
            pieces += self._read_rows(int(f), series[self.file[series] == f], columns)
        frame = pa.concat_tables(pieces).to_pandas()
        panel = check_panel([frame], self.spec, self.source, freq=self.freq, require_long=False)
        if panel.ids != tuple(self.ids[i] for i in series):
            raise RnnopsError(
                f"{self.source} changed since it was indexed (series {series[0]} onwards are not where they were); "
                "start the run again"
            )
        static = tuple(replace(s, values=s.values[series]) for s in self.static)  # the whole panel's codes
        short = set(self.too_short)
        return replace(panel, static=static, too_short=tuple(i for i in panel.ids if i in short))

    def _read_rows(self, f: int, series: np.ndarray, columns: list[str]) -> list:
        """The rows of ``series`` (ascending, all in file ``f``), one Arrow table each, reading the
        row groups that hold them one at a time, in order, and keeping only those a series still
        needs: memory is a row group or two beyond the rows returned, however many series are asked for."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(self.files[f])
        bounds = self.row_groups[f]
        first = self.start[series]
        last = first + self.rows[series]
        g0 = np.searchsorted(bounds, first, "right") - 1
        g1 = np.searchsorted(bounds, last - 1, "right") - 1
        groups: dict[int, pa.Table] = {}
        pieces = []
        for a, b, lo, n in zip(g0.tolist(), g1.tolist(), first.tolist(), self.rows[series].tolist()):
            for g in [g for g in groups if g < a]:  # series are in file order: earlier groups are done
                del groups[g]
            for g in range(a, b + 1):
                if g not in groups:
                    groups[g] = reader.read_row_group(g, columns=columns)
            span = pa.concat_tables([groups[g] for g in range(a, b + 1)])  # chunks side by side, no copy
            offset = lo - int(bounds[a])
            # take copies the rows, so that no row group outlives the series that needed it (a slice
            # would keep the whole group's buffers alive)
            pieces.append(span.take(pa.array(np.arange(offset, offset + n))))
        return pieces


def _concat(panels: list[Panel]) -> Panel:
    """Panels of the same spec and frequency (blocks of one panel) as one, series in order."""
    if len(panels) == 1:
        return panels[0]
    first = panels[0]
    lengths = np.concatenate([p.lengths for p in panels])
    return replace(
        first,
        ids=tuple(i for p in panels for i in p.ids),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        timestamps=np.concatenate([p.timestamps for p in panels]),
        target=np.concatenate([p.target for p in panels]),
        future=np.concatenate([p.future for p in panels]),
        past=np.concatenate([p.past for p in panels]),
        static=tuple(
            replace(s, values=np.concatenate([p.static[k].values for p in panels])) for k, s in enumerate(first.static)
        ),
        too_short=tuple(i for p in panels for i in p.too_short),
        filled_gaps=sum(p.filled_gaps for p in panels),
        missing_targets=sum(p.missing_targets for p in panels),
    )


class _Static:
    """One static column's values per series as the pass meets them, codes of the whole panel."""

    def __init__(self, name: str):
        self.name = name
        self.kind: str | None = None
        self.text = _Codes()  # categorical: first-appearance codes of the values' text
        self.values: list[np.ndarray] = []

    def add(self, column: StaticColumn, source: str) -> None:
        if self.kind is not None and column.kind != self.kind:
            raise RnnopsError(
                f"static column {self.name!r} holds numbers in some files of {source} and text in others; "
                "give it one type in every file"
            )
        self.kind = column.kind
        if column.kind == "real":
            self.values.append(column.values)
            return
        # block codes: 0 missing, c -> vocabulary[c - 1]; to codes of the text over the whole panel (-1 missing)
        table = np.concatenate([[-1], self.text.encode(np.array(column.vocabulary, dtype=object))]).astype(np.int64)
        self.values.append(table[column.values])

    def column(self) -> StaticColumn:
        values = np.concatenate(self.values) if self.values else np.zeros(0)
        if self.kind == "real":
            return StaticColumn(self.name, "real", values.astype(np.float32))
        text = self.text.values
        vocabulary = tuple(sorted(text))
        remap = np.zeros(len(text) + 1, np.int64)  # as the in-memory reader: 1 + sorted position, missing 0
        position = {v: i + 1 for i, v in enumerate(vocabulary)}
        for c, value in enumerate(text):
            remap[c] = position[value]
        return StaticColumn(self.name, "categorical", remap[values], vocabulary)


def index_panel(source, spec: PanelSpec, block_rows: int = BATCH_ROWS) -> PanelIndex:
    """Index a Parquet panel (a file or a directory of files) in one streaming pass, checking it as
    :func:`rnnops.training.panel.read_panel` does; see the module's docstring."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = panel_files(source)
    name = Path(source).expanduser().name
    for path in files:
        if path.suffix.lower() not in PARQUET_SUFFIXES:
            raise RnnopsError(
                f"--stream reads Parquet (a file or a directory of files), not {path.name}: convert it, or "
                "train without --stream"
            )
        _check_columns(spec, _readable_columns(path), path.name)
    columns = [c for c, _ in _unique_roles(spec)]
    idc = spec.id_column
    where: dict[str, tuple[str, int]] = {}  # id -> (file, row) where its rows start
    parts: dict[str, list] = {k: [] for k in ("ids", "file", "start", "rows", "lengths")}
    statics = [_Static(c) for c in spec.static_columns]
    found: dict = {"freq": None, "season": 1, "calendar": (), "filled": 0, "missing": 0}
    row_groups = []

    def add_block(frame, f: int, path: Path, first_row: int) -> None:
        """Check a block of whole series (file rows ``first_row`` on) and index them."""
        ids = frame[idc]
        text = ids.astype(str).where(ids.notna(), None).to_numpy()
        run = np.flatnonzero(np.concatenate([[True], text[1:] != text[:-1]]))  # first row of each id run
        panel = check_panel(
            [frame], spec, path.name, freq=found["freq"], first_row=first_row, require_long=False
        )  # every input check of the in-memory reader, on these series
        if len(run) != panel.n_series or len(where) + len(run) != len(where.keys() | set(text[run])):
            _not_together(text, run, where, path, first_row)
        if found["freq"] is None:
            found.update(freq=panel.freq, season=panel.season, calendar=panel.calendar_names)
        for r in run:
            where[text[r]] = (path.name, first_row + int(r))
        parts["ids"].append(text[run])
        parts["file"].append(np.full(len(run), f, np.int32))
        parts["start"].append(first_row + run)
        parts["rows"].append(np.diff(np.append(run, len(text))))
        parts["lengths"].append(panel.lengths)
        for s, column in zip(statics, panel.static):
            s.add(column, name)
        found["filled"] += panel.filled_gaps
        found["missing"] += panel.missing_targets

    for f, path in enumerate(files):
        try:
            reader = pq.ParquetFile(path)
            meta = reader.metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            row_groups.append(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            carry, carry_row, file_row = None, 0, 0
            for batch in reader.iter_batches(columns=columns, batch_size=block_rows):
                frame = batch.to_pandas()
                first = file_row
                if carry is not None:
                    frame, first = pd.concat([carry, frame], ignore_index=True), carry_row
                file_row += batch.num_rows
                # the last series may go on in the next batch: hold its rows back
                text = frame[idc].astype(str).where(frame[idc].notna(), None).to_numpy()
                other = np.flatnonzero(text != text[-1])
                if text[-1] is None:  # a row without id: the check says so, in the block it is in
                    cut = len(text)
                else:  # 0: the whole batch is one series, which may go on
                    cut = int(other[-1]) + 1 if len(other) else 0
                if cut:
                    add_block(frame.iloc[:cut], f, path, first)
                carry, carry_row = frame.iloc[cut:].reset_index(drop=True), first + cut
            if carry is not None and len(carry):
                add_block(carry, f, path, carry_row)
        except RnnopsError:
            raise
        except Exception as exc:  # Arrow raises many types for damaged files
            raise RnnopsError(f"cannot read {path.name} as Parquet: {str(exc).splitlines()[0]}") from None
    if not parts["ids"]:
        raise RnnopsError(f"{name} has no rows")
    ids = tuple(np.concatenate(parts["ids"]).tolist())
    lengths = np.concatenate(parts["lengths"]).astype(np.int64)
    need = spec.lookback + spec.horizon
    short = lengths < need
    if short.all():
        longest = int(np.argmax(lengths))
        raise RnnopsError(
            f"no series of {name} is long enough for lookback {spec.lookback} + horizon {spec.horizon} "
            f"({need} steps): the longest, {ids[longest]!r}, has {int(lengths[longest])}; use a shorter "
            "--lookback or --horizon"
        )
    return PanelIndex(
        spec=spec,
        freq=found["freq"],
        season=found["season"],
        files=tuple(files),
        row_groups=tuple(row_groups),
        ids=ids,
        file=np.concatenate(parts["file"]),
        start=np.concatenate(parts["start"]).astype(np.int64),
        rows=np.concatenate(parts["rows"]).astype(np.int64),
        lengths=lengths,
        static=tuple(s.column() for s in statics),
        calendar_names=tuple(found["calendar"]),
        too_short=tuple(ids[i] for i in np.flatnonzero(short)),
        filled_gaps=found["filled"],
        missing_targets=found["missing"],
        source=name,
    )


def _not_together(text: np.ndarray, run: np.ndarray, where: dict, path: Path, first_row: int) -> None:
    """One line for a series whose rows are not in one block (the streaming reader reads each
    series as one run of rows)."""
    seen = dict(where)
    for r in run:
        sid = text[r]
        if sid in seen:
            file, row = seen[sid]
            raise RnnopsError(
                f"series {sid!r} of the panel has rows at row {row} of {file} and again at row "
                f"{first_row + int(r)} of {path.name}; streaming reads each series as one run of rows: sort "
                "the panel by id then date (each series in one file), or train without --stream"
            )
        seen[sid] = (path.name, first_row + int(r))


# --------------------------------------------------------------------------- the window sampler


@dataclass
class Buffer:
    """The series a sampler draws from now: ``positions`` into its origin arrays (ascending, so
    that ``panel``'s series i is position ``positions[i]``) and the panel of those series."""

    positions: np.ndarray
    panel: Panel
    windows: object  # panel_train.PanelWindows of panel (built by the caller's factory)


class StreamSampler:
    """Training windows of a streamed panel, a buffer of chunks at a time (see the module docstring).

    ``series``, ``low``, ``high``: the series to sample (ascending; one rank's shard) and each one's
    range of training origins (:func:`rnnops.training.panel_train.training_origins`). ``make_windows``
    turns a loaded :class:`Panel` into the window cutter (``PanelWindows(panel, lookback)``); it is
    passed in so this module needs no torch."""

    def __init__(
        self,
        index: PanelIndex,
        series: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        make_windows,
        seed: int,
        chunk_rows: int = 1 << 15,
        buffer_chunks: int = 16,
        steps_per_buffer: int = 25,
    ):
        if steps_per_buffer < 1 or buffer_chunks < 1 or chunk_rows < 1:
            raise ValueError("steps_per_buffer, buffer_chunks and chunk_rows must be at least 1")
        self.index, self.make_windows = index, make_windows
        self.series, self.low, self.high = series, low, high
        self.steps_per_buffer = steps_per_buffer
        position = {int(s): p for p, s in enumerate(series)}
        self.chunks = [np.array([position[int(s)] for s in c]) for c in index.chunks(series, chunk_rows)]
        self.buffer_chunks = min(buffer_chunks, len(self.chunks))
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="panel-stream")
        self.pending = self.pool.submit(self._read, self._next_chunks())
        self.buffer: Buffer | None = None
        self.used = 0
        self.buffers_read = 0
        self.wait_s = 0.0  # time steps waited for a buffer that was not read yet

    def _next_chunks(self) -> np.ndarray:
        """The next ``buffer_chunks`` chunks of a seeded random order over all chunks (a new order
        each pass), as positions."""
        picked = []
        while len(picked) < self.buffer_chunks:
            if not self.order:
                self.order = self.rng.permutation(len(self.chunks)).tolist()
            picked.append(self.order.pop())
        return np.sort(np.concatenate([self.chunks[c] for c in picked]))

    def _read(self, positions: np.ndarray) -> Buffer:
        panel = self.index.load(self.series[positions])
        return Buffer(positions, panel, self.make_windows(panel))

    def current(self) -> Buffer:
        """The buffer to draw this step's windows from: the next one after ``steps_per_buffer`` steps."""
        if self.buffer is None or self.used >= self.steps_per_buffer:
            import time

            t0 = time.perf_counter()
            self.buffer = self.pending.result()
            self.wait_s += time.perf_counter() - t0
            self.pending = self.pool.submit(self._read, self._next_chunks())
            self.used = 0
            self.buffers_read += 1
        self.used += 1
        return self.buffer

    def close(self) -> None:
        self.pending.cancel()
        self.pool.shutdown(wait=True)
