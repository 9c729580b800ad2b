"""The local engine's panel job, streamed: memory flat in the number of series.

PANEL is read as Arrow record batches; the rows of each series must be contiguous (a panel sorted
or grouped by id; dates may be in any order within a series). Each batch's complete series go
through the same :func:`.panel.group` and :func:`.panel.prepare_series` as the whole-file path,
the valid series queue up and are forecast ``--batch-size`` at a time in file order (the calls
the whole-file path makes, so the same bytes even for an older panel graph that is not
batch-invariant), and each call's rows go to the writer. FUTURE is read alongside in the same
way; its series are matched by id, those read ahead of the panel wait in memory (a series missing
from FUTURE makes the rest of FUTURE wait: its ``H`` rows per series).

What stays in memory: a record batch (and two read ahead), the queued series' features (arrays:
at most a record batch's series and a call's), two model calls in flight, the writer's row
group, the error rows, and the ids seen (to notice a series that comes back). When a series does
come back (PANEL or FUTURE not grouped by id) :class:`NotGrouped` is raised and the caller falls
back to reading the panel whole; :class:`SubSecond` when the output's date type, fixed from the
first call, turns out to need nanoseconds (then the caller runs again with it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from rnnops.errors import RnnopsError
from rnnops.serving.batch import panel as P
from rnnops.serving.batch.job import ForecastJob, ForecastModel, JobSummary, Layout, _progress
from rnnops.serving.batch.read import file_format, prefetch
from rnnops.serving.batch.tails import SeriesError
from rnnops.serving.batch.write import (
    AtomicWriter,
    date_type_for,
    disk_full_error,
    errors_path_for,
    no_space,
    output_schema,
    output_table,
    strict_error,
    write_errors,
)

if TYPE_CHECKING:
    from rnnops.serving.runtime import Runtime

IN_FLIGHT = 2  # model calls queued or running in the calls' thread
CHUNK_ROWS = 65_536  # rows per record batch read from Parquet
CSV_BLOCK_BYTES = 1 << 20  # bytes per record batch read from CSV (Arrow's default, as the whole-file read)


class NotGrouped(Exception):
    """A series' rows are not contiguous in ``path``: the streamed job cannot take this file."""

    def __init__(self, path: Path, sid: Hashable):
        super().__init__(f"{path.name}: the rows of series {sid!r} are not contiguous")


class SubSecond(Exception):
    """A forecast date has a fraction of a second after the output was started with whole seconds."""


def record_batches(path: Path, columns: Sequence[str], text: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """``path``'s ``columns`` as record batches, read as :func:`.panel.read_file` reads them
    (CSV: ``text`` columns as strings, the others inferred from the first block)."""
    cols = list(dict.fromkeys(columns))
    try:
        if file_format(path, "input") == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=cols)
            return
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(include_columns=cols, column_types={c: pa.string() for c in text})
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pcsv.open_csv(
                stream, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert
            )
            yield from reader
    except (OSError, pa.ArrowException) as exc:
        raise RnnopsError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


@dataclass
class SeriesReader:
    """Whole series of a file, chunk by chunk, as :class:`.panel.Table` (each series' rows in the
    file's order of first appearance, positions counted over the whole file)."""

    path: Path
    id_column: str
    date_column: str
    numeric: Sequence[str]
    text: Sequence[str]
    date_format: str | None
    rows: int = 0  # rows read so far (with those without an id)
    no_id_rows: int = 0
    no_id_pos: int = -1
    seen: set[str] = field(default_factory=set)  # ids of the series handed out (to notice one coming back)

    def chunks(self) -> Iterator[P.Table]:
        cols = [self.id_column, self.date_column, *self.numeric, *self.text]
        carry: pa.Table | None = None  # the last, maybe incomplete, series of the previous batch
        for batch in prefetch(record_batches(self.path, cols, (self.id_column, self.date_column, *self.text))):
            t = pa.Table.from_batches([batch]).append_column(
                "_pos", pa.array(np.arange(self.rows, self.rows + batch.num_rows, dtype=np.int64))
            )
            self.rows += batch.num_rows
            ids = t.column(self.id_column)
            if ids.null_count:
                nulls = t.filter(ids.is_null())
                if self.no_id_pos < 0:
                    self.no_id_pos = int(nulls.column("_pos")[0].as_py())
                self.no_id_rows += nulls.num_rows
                t = t.filter(ids.is_valid())
            if carry is not None:
                t = pa.concat_tables([carry, t])
            if t.num_rows == 0:
                carry = None
                continue
            ids = t.column(self.id_column).combine_chunks()
            encoded = (ids.dictionary_decode() if pa.types.is_dictionary(ids.type) else ids).dictionary_encode()
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            runs = np.flatnonzero(np.diff(codes)) + 1  # where a new series starts
            if len(runs) + 1 != len(encoded.dictionary):  # an id comes back within the chunk
                raise NotGrouped(self.path, encoded.dictionary[_first_repeat(codes[np.r_[0, runs]])].as_py())
            tail = int(runs[-1]) if len(runs) else 0  # the last series may go on in the next batch
            carry = t.slice(tail)
            if tail:
                yield self._table(t.slice(0, tail))
        if carry is not None and carry.num_rows:
            yield self._table(carry)

    def _table(self, t: pa.Table) -> P.Table:
        pos = t.column("_pos").to_numpy()
        table = P.group(
            t, self.id_column, self.date_column, self.numeric, self.text, self.date_format, pos, self.path.name
        )
        for k, key in enumerate(table.keys):
            if key in self.seen:
                raise NotGrouped(self.path, table.ids[k])
            self.seen.add(key)
        return table


def _first_repeat(codes: np.ndarray) -> int:
    """The first code that comes back in ``codes`` (there is one)."""
    seen: set[int] = set()
    for k in codes.tolist():
        if k in seen:
            return int(k)
        seen.add(k)
    raise AssertionError("no code comes back")


@dataclass
class FutureCursor:
    """FUTURE's series for the panel's, matched by id; those read ahead wait in ``pending`` (the
    chunk they came in and their place in it: rows are gathered per chunk, not sliced per series)."""

    reader: SeriesReader
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (chunk number, series in it)
    chunks: dict[int, P.Table] = field(default_factory=dict)  # the chunks that still hold pending series
    _read: Iterator[P.Table] | None = None
    _count: int = 0
    _done: bool = False

    def table(self, keys: Sequence[str], names: Sequence[str]) -> P.Table:
        """A :class:`.panel.Table` holding FUTURE's rows of the ``keys`` it has, in their order."""
        if self._read is None:
            self._read = self.reader.chunks()
        for key in keys:
            while key not in self.pending and not self._done:
                nxt = next(self._read, None)
                if nxt is None:
                    self._done = True
                    break
                self.chunks[self._count] = nxt
                self.pending.update((fk, (self._count, k)) for k, fk in enumerate(nxt.keys))
                self._count += 1
        found = [(key, self.pending.pop(key)) for key in keys if key in self.pending]
        where = np.array([w for _, w in found], np.int64).reshape(-1, 2)
        counts = np.zeros(len(found), np.int64)
        dates = np.zeros(0, np.int64)
        values = {n: np.zeros(0) for n in names}
        parts: list[tuple[np.ndarray, np.ndarray, P.Table]] = []  # (places in found, rows, chunk)
        for c in np.unique(where[:, 0]):
            chunk = self.chunks[int(c)]
            at = np.flatnonzero(where[:, 0] == c)
            ks = where[at, 1]
            lo, n = chunk.starts[ks], chunk.starts[ks + 1] - chunk.starts[ks]
            counts[at] = n
            rows = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
            parts.append((at, rows, chunk))
        if parts:  # the rows in the order of ``found``
            order = np.argsort(np.concatenate([np.repeat(at, counts[at]) for at, _, _ in parts]), kind="stable")
            dates = np.concatenate([ch.dates[r] for _, r, ch in parts])[order]
            values = {n: np.concatenate([ch.values[n][r] for _, r, ch in parts])[order] for n in names}
        live = {c for c, _ in self.pending.values()}
        for c in [c for c in self.chunks if c not in live]:  # a chunk whose series are all handed out
            del self.chunks[c]
        ids = [key for key, _ in found]
        return P.Table(
            ids=list(ids),
            keys=ids,
            starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            first_pos=np.zeros(len(found), np.int64),
            dates=dates,
            values=values,
            text={},
            no_id_rows=0,
            no_id_pos=-1,
        )


def run_streamed(
    job: ForecastJob, model: ForecastModel, layout: Layout, runtime: Runtime, date_type: pa.DataType | None
) -> JobSummary:
    """The streamed local job (see the module's docstring); ``date_type``: the output's date type
    when known (else from the first call's dates)."""
    t0 = time.perf_counter()
    c = P.contract_of(model)
    assert layout.id_column is not None
    idc, datec = layout.id_column, layout.date_column
    numeric, text = P.columns(c)
    panel = SeriesReader(job.input, idc, datec, numeric, text, job.date_format)
    future = None
    if job.future is not None and c.future_covariates:
        future = FutureCursor(SeriesReader(job.future, idc, datec, c.future_covariates, (), job.date_format))
    H, batch = layout.horizon, job.batch_windows
    errors: list[SeriesError] = []
    queue_ids: list[Hashable] = []
    queue = P.Features.empty(c)  # the series waiting for their call, in file order
    writer: AtomicWriter | None = None
    schema: pa.Schema | None = None
    forecasted = series = 0
    bar = _progress(job, unit="series", desc="forecasting")

    # The model runs in a thread (onnxruntime releases the GIL) while this one groups the next
    # series and writes the previous call's rows: calls in flight are written in their order.
    calls = ThreadPoolExecutor(1, thread_name_prefix="rnnops-panel-call")
    in_flight: deque[tuple[list[Hashable], P.Features, Future[np.ndarray]]] = deque()

    def flush(n: int) -> None:
        nonlocal queue
        ids, feats = queue_ids[:n], queue.rows(slice(0, n))
        del queue_ids[:n]
        queue = queue.rows(slice(n, None))
        in_flight.append((ids, feats, calls.submit(P.predict, runtime, feats, batch)))
        if len(in_flight) > IN_FLIGHT:
            write_call()

    def write_call() -> None:
        nonlocal writer, schema, forecasted
        ids, feats, call = in_flight.popleft()
        y = call.result()
        n = len(ids)
        dates = feats.future[:, :H]
        if schema is None:
            schema = output_schema(layout, date_type or date_type_for(dates))
            writer = AtomicWriter(job.output, schema)
        elif schema.field(datec).type == pa.timestamp("s") and date_type_for(dates) != pa.timestamp("s"):
            raise SubSecond()
        assert writer is not None
        writer.write(output_table(schema, layout, ids, dates, y, model.name, model.version))
        forecasted += n
        bar.update(n)

    try:
        for chunk in panel.chunks():
            fut = None if future is None else future.table(chunk.keys, c.future_covariates)
            prep = P.prepare_series(chunk, fut, c, idc, datec)
            series += len(chunk.ids)
            errors += prep.errors
            queue_ids.extend(prep.ids)
            queue = P.Features.concat([queue, prep.features])
            while len(queue) >= batch:
                flush(batch)
        if len(queue):
            flush(len(queue))
        while in_flight:
            write_call()
        if panel.no_id_rows:
            errors.append(SeriesError(None, panel.no_id_rows, f"rows without an id in {idc!r}", panel.no_id_pos))
            series += 1
        errors.sort(key=lambda e: e.first_pos)
        if job.strict and errors:
            raise strict_error(errors, layout)
        if writer is None:  # nothing to forecast: an empty output, as the whole-file path writes
            schema = output_schema(layout, date_type or date_type_for(np.zeros((0, H), np.int64)))
            writer = AtomicWriter(job.output, schema)
        errors_path = write_errors(errors_path_for(job), layout, errors)
        writer.commit()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        why = no_space(exc) if isinstance(exc, Exception) else None
        if why is None or writer is None:
            raise
        raise disk_full_error(why, job, writer) from None
    finally:
        calls.shutdown(cancel_futures=True)
        bar.close()
    return JobSummary(
        engine="local",
        output=job.output,
        errors_path=errors_path,
        rows_read=panel.rows,
        series=series,
        forecasted=forecasted,
        failed=len(errors),
        output_rows=writer.rows,
        seconds=time.perf_counter() - t0,
        freq_mismatch=0,
        plots=(),
        first_errors=tuple(errors[:5]),
    )
