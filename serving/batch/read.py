"""Reading a batch job's input: file formats, the header, Arrow record batches of the needed
columns in chunks (read ahead in a thread), dates and the feature matrix of a chunk.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnops.errors import RnnopsError

if TYPE_CHECKING:
    from rnnops.serving.batch.job import Layout

T = TypeVar("T")

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_BLOCK_BYTES = 1 << 20


def file_format(path: Path, what: str) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise RnnopsError(f"{what} {path}: use a .csv (or .csv.gz) or .parquet file")


def read_header(path: Path, fmt: str) -> pa.Schema:
    """The input's columns (CSV: names only, types left to the reader)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise RnnopsError(f"cannot read {path} as Parquet: {exc}") from None
    import pyarrow.csv as pcsv

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(block_size=1 << 20),
                convert_options=pcsv.ConvertOptions(column_types={}),
            )
            return pa.schema([(name, pa.string()) for name in reader.schema.names])
    except (OSError, pa.ArrowException) as exc:
        raise RnnopsError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from None


def iter_input(path: Path, layout: Layout, chunk_rows: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Record batches of the needed columns (at most ``chunk_rows`` rows each), with the input
    bytes consumed so far (CSV) or rows (Parquet), for the progress bar."""
    cols = [c for c in (layout.id_column, layout.date_column) if c] + list(layout.features)
    if layout.fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
                done += batch.num_rows
                yield batch, done
        except pa.ArrowException as exc:
            raise RnnopsError(f"cannot read {path}: {exc}") from None
        return
    import pyarrow.csv as pcsv

    types = {c: pa.float64() for c in layout.features}
    types[layout.date_column] = pa.string()
    if layout.id_column:
        types[layout.id_column] = pa.string()  # ids are labels: "007" stays "007"
    convert = pcsv.ConvertOptions(
        column_types=types,
        include_columns=cols,
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    raw = pa.OSFile(str(path), "rb")
    compression = pa.Codec.detect(str(path)).name if not str(path).lower().endswith(".csv") else None
    stream = pa.CompressedInputStream(raw, compression) if compression else raw
    # 1 MiB blocks parsed in the reading thread (use_threads=False): measured fastest here and
    # the leanest; Arrow's threaded reader reads dozens of blocks ahead (hundreds of MB).
    read = pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    pending, n = [], 0
    try:
        reader = pcsv.open_csv(stream, read_options=read, convert_options=convert)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            for lo in range(0, batch.num_rows, chunk_rows):
                piece = batch.slice(lo, chunk_rows)
                pending.append(piece)
                n += piece.num_rows
                if n >= chunk_rows:
                    yield _combine(pending), raw.tell()
                    pending, n = [], 0
        if pending:
            yield _combine(pending), raw.tell()
    except pa.ArrowInvalid as exc:
        raise RnnopsError(
            f"cannot read {path}: {str(exc).splitlines()[0]} (feature columns must hold numbers; "
            "an empty cell is a missing value)"
        ) from None
    finally:
        stream.close()


def _combine(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def prefetch(it: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``it`` in a thread, ``depth`` items ahead: Arrow parses the next chunk (without the
    GIL) while this thread processes the current one."""
    q: queue.Queue[Any] = queue.Queue(depth)  # items, then the end marker or an exception
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    t = threading.Thread(target=pump, name="rnnops-forecast-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=5)


def parse_dates(arr: pa.Array, date_format: str | None = None) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC for inputs with an offset), NAT where missing or
    unparsable. ISO 8601 strings take Arrow's fast path; anything else pandas' parser."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:  # Arrow keeps UTC underneath
            arr = arr.cast(pa.timestamp(t.unit, tz="UTC")).cast(pa.timestamp(t.unit))
        out = arr.cast(pa.timestamp("ns"), safe=False)
    elif pa.types.is_date(t):
        out = arr.cast(pa.timestamp("ns"))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        if date_format:
            out = pc.strptime(arr, format=date_format, unit="ns", error_is_null=True)
        else:
            try:
                out = arr.cast(pa.timestamp("ns"))
            except pa.ArrowInvalid:
                out = _pandas_dates(arr)
    else:
        raise RnnopsError(f"the date column holds {t}, not dates or strings")
    return out.to_numpy(zero_copy_only=False).astype("datetime64[ns]").view(np.int64)


def _pandas_dates(arr: pa.Array) -> pa.Array:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": we coerce and report
        parsed = pd.to_datetime(pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object), errors="coerce", utc=True)
    return pa.array(parsed.dt.tz_localize(None).astype("datetime64[ns]"), type=pa.timestamp("ns"))


def feature_matrix(batch: pa.RecordBatch, features: Sequence[str]) -> np.ndarray:
    """float32 ``[rows, F]`` of the feature columns; nulls become NaN."""
    cols = []
    for name in features:
        col = batch.column(name)
        try:
            cols.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32))
        except (TypeError, ValueError):
            raise RnnopsError(f"column {name} holds {col.type}, not numbers") from None
    return np.column_stack(cols) if cols else np.zeros((batch.num_rows, 0), np.float32)
