"""The Spark engine of ``rnnops forecast --engine spark`` (Apache Spark 4, ``pyspark``).

The same job as the local engine, spread over a Spark cluster (``local[*]`` by default, or
``--spark-master spark://...`` / ``yarn`` / ``k8s://...``):

1. Spark reads the input (CSV with an explicit schema, or Parquet) and tags every row with
   ``monotonically_increasing_id()``, which increases in file order for a single input file;
2. rows are grouped by a hash bucket of the series id, so each group holds *many whole series*
   and the model runs on them in a few large batches (one group per series would mean one
   onnxruntime call per series);
3. each group goes through ``applyInArrow`` (the Arrow-native sibling of ``applyInPandas``: no
   pandas round trip) into :func:`forecast_group`, which sorts it back into file order and feeds
   it through the local engine's own :class:`~rnnops.serving.batch.SeriesTails` and
   :meth:`~rnnops.serving.batch.SeriesTails.finish`, then runs the model with one onnxruntime
   session per Python worker process (created on first use, cached for the worker's life; the
   ONNX file reaches every executor through ``SparkContext.addFile`` and its sha256 is checked
   there);
4. each group returns one row per series (its forecasts as arrays, or its error); the driver
   collects those (series x horizon x targets floats, far smaller than the input), orders them by
   first appearance and writes the output through the local engine's writer.

Same checks, same errors, same order, same numbers as the local engine (tests/test_batch.py).
Workers need ``rnnops[serve]`` + ``pyspark`` installed (on a cluster: the same Python env).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from rnnops.errors import RnnopsError
from rnnops.serving import batch as B

if TYPE_CHECKING:  # pyspark is untyped (these are Any to mypy); they name what a function returns
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

    from rnnops.serving.runtime import Runtime

POS = "_rnnops_pos"
BUCKET = "_rnnops_bucket"
BUCKET_BYTES = 64 << 20  # about this much input per group (a group is held in a worker's memory)


@dataclass(frozen=True)
class GroupTask:
    """Everything a worker needs, pickled once with the function (no driver state)."""

    layout: B.Layout
    model_file: str  # name under SparkFiles
    local_path: str  # the driver's path (used when SparkFiles has no copy, e.g. in tests)
    sha256: str
    batch_windows: int
    with_windows: bool  # return the windows too (for --plot)


def result_schema(layout: B.Layout, with_windows: bool) -> StructType:
    from pyspark.sql import types as T

    fields = [
        T.StructField("id", _spark_type(layout.id_type) if layout.id_column else T.StringType()),
        T.StructField("first", T.LongType()),
        T.StructField("rows", T.LongType()),
        T.StructField("error", T.StringType()),
        T.StructField("mismatch", T.BooleanType()),
        T.StructField("future", T.ArrayType(T.LongType())),
        T.StructField("forecast", T.ArrayType(T.FloatType())),
    ]
    if with_windows:
        fields += [
            T.StructField("window", T.ArrayType(T.FloatType())),
            T.StructField("window_dates", T.ArrayType(T.LongType())),
        ]
    return T.StructType(fields)


def _spark_type(t: pa.DataType | None) -> DataType:
    from pyspark.sql import types as T

    if t is None or pa.types.is_string(t) or pa.types.is_large_string(t):
        return T.StringType()
    if pa.types.is_integer(t):
        return T.LongType()
    raise RnnopsError(f"the Spark engine takes string or integer series ids; this file's are {t}")


# ------------------------------------------------------------------------------- worker side

_RUNTIMES: dict[str, Runtime] = {}  # sha256 -> Runtime, one per Python worker process


def _runtime(model_file: str, local_path: str, sha256: str) -> Runtime:
    """The worker's onnxruntime session for the model shipped as ``model_file`` (SparkFiles;
    ``local_path`` where it has no copy, e.g. in tests), checked against ``sha256``."""
    rt = _RUNTIMES.get(sha256)
    if rt is None:
        from rnnops.serving.runtime import Runtime
        from rnnops.util import sha256_file

        path = local_path
        with contextlib.suppress(Exception):
            from pyspark import SparkFiles

            shipped = SparkFiles.get(model_file)
            if os.path.isfile(shipped):
                path = shipped
        if sha256_file(Path(path)) != sha256:
            raise RuntimeError(f"{path} on this executor does not hash to {sha256[:16]}…")
        rt = _RUNTIMES[sha256] = Runtime(path, threads=1, name="batch")
    return rt


def forecast_group(task: GroupTask, table: pa.Table) -> pa.Table:
    """One group of whole series -> one row per series (forecasts or the error)."""
    layout = task.layout
    table = table.sort_by(POS)  # back to file order: the time-order checks depend on it
    tails = B.SeriesTails(layout)
    for batch in table.to_batches(max_chunksize=65_536):
        pos = batch.column(POS).to_numpy(zero_copy_only=False).astype(np.int64)
        tails.feed(batch, pos)
    prepared = tails.finish()
    m, H, T, L, F = len(prepared.ids), layout.horizon, len(layout.targets), layout.lookback, len(layout.features)
    K = 1 + len(layout.quantiles) if layout.quantiles else 1  # the forecast, then each quantile
    y = np.zeros((m, H, T, K), np.float32)
    if m:  # chunks of batch_windows, a lone window run as a pair: the local engine's calls exactly
        from rnnops.serving.batch.local import predict

        y[:] = predict(_runtime(task.model_file, task.local_path, task.sha256), prepared.windows, task.batch_windows)[
            :, :H
        ].reshape(m, H, T, K)
    errors = prepared.errors
    n_err = len(errors)
    cols = {
        "id": list(prepared.ids) + [e.series_id for e in errors],
        "first": np.r_[prepared.first_pos, [e.first_pos for e in errors]].astype(np.int64),
        "rows": np.r_[prepared.rows, [e.rows for e in errors]].astype(np.int64),
        "error": [None] * m + [e.message for e in errors],
        "mismatch": prepared.mismatch.tolist() + [False] * n_err,
        "future": _lists(prepared.future.reshape(m, H), pa.int64(), n_err),
        "forecast": _lists(y.reshape(m, H * T * K), pa.float32(), n_err),
    }
    if task.with_windows:
        cols["window"] = _lists(prepared.windows.reshape(m, L * F), pa.float32(), n_err)
        cols["window_dates"] = _lists(prepared.window_dates.reshape(m, L), pa.int64(), n_err)
    return pa.table(cols, schema=_arrow_schema(layout, task.with_windows))


def _arrow_schema(layout: B.Layout, with_windows: bool) -> pa.Schema:
    id_type = pa.int64() if layout.id_type is not None and pa.types.is_integer(layout.id_type) else pa.string()
    fields = [
        ("id", id_type),
        ("first", pa.int64()),
        ("rows", pa.int64()),
        ("error", pa.string()),
        ("mismatch", pa.bool_()),
        ("future", pa.list_(pa.int64())),
        ("forecast", pa.list_(pa.float32())),
    ]
    if with_windows:
        fields += [("window", pa.list_(pa.float32())), ("window_dates", pa.list_(pa.int64()))]
    return pa.schema(fields)


def group_function(task: GroupTask) -> Callable[[pa.Table], pa.Table]:
    """``forecast_group`` bound to ``task``, with the type hints pyspark reads to pick the
    ``pyarrow.Table -> pyarrow.Table`` form (it cannot read them through functools.partial)."""

    def forecast_series_group(table: pa.Table) -> pa.Table:
        return forecast_group(task, table)

    return forecast_series_group


def _lists(values: np.ndarray, typ: pa.DataType, nulls: int) -> pa.Array:
    """Rows of a 2-d array as an Arrow list column, then ``nulls`` null lists (the failed series)."""
    m, k = values.shape
    flat = pa.array(values.reshape(-1), type=typ)
    offsets = pa.array(np.arange(0, (m + 1) * k, k, dtype=np.int32) if m else np.zeros(1, np.int32))
    arr = pa.ListArray.from_arrays(offsets, flat)
    if nulls:
        arr = pa.concat_arrays([arr, pa.nulls(nulls, pa.list_(typ))])
    return arr


# ------------------------------------------------------------------------------- driver side


def session(master: str | None, progress: bool) -> SparkSession:
    """A SparkSession for the job (``local[*]`` unless told otherwise); quiet, UTC, no web UI."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise RnnopsError("--engine spark needs pyspark: pip install 'rnnops[spark]' (and Java 17+)") from None
    # We hand Spark Arrow tables, never pandas: its "pandas >= 3 not fully supported" warning does not apply.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    # Workers must run this interpreter (its site-packages hold rnnops and onnxruntime).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master or os.environ.get("RNNOPS_SPARK_MASTER") or "local[*]")
        .appName("rnnops-forecast")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "true" if progress else "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.python.worker.reuse", "true")
    )
    try:
        existing = SparkSession.getActiveSession()
        spark = builder.getOrCreate()
        spark._rnnops_owned = existing is None  # stop it at the end only if this job started it
    except Exception as exc:  # py4j / Java launch failures
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RnnopsError(
            f"cannot start Spark ({first}); the Spark engine needs Java 17 or later "
            "(`java -version`; on Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless)"
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_input(spark: SparkSession, job: B.ForecastJob, layout: B.Layout) -> DataFrame:
    """The needed columns as a DataFrame: ids and dates as the file has them, features as doubles."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    path = str(job.input.resolve())
    cols = [c for c in (layout.id_column, layout.date_column) if c] + list(layout.features)
    if layout.fmt == "parquet":
        df = spark.read.parquet(path).select(*cols)
    else:
        header = list(B.read_header(job.input, "csv").names)
        schema = T.StructType(
            [T.StructField(c, T.DoubleType() if c in layout.features else T.StringType()) for c in header]
        )
        # RFC 4180 quoting like Arrow's reader; a malformed row stops the job, as it does locally
        df = (
            spark.read.schema(schema)
            .option("header", True)
            .option("mode", "FAILFAST")
            .option("escape", '"')
            .csv(path)
            .select(*cols)
        )
    for c in layout.features:
        df = df.withColumn(c, F.col(c).cast("double"))
    return df.withColumn(POS, F.monotonically_increasing_id())


def run_spark(job: B.ForecastJob, model: B.ForecastModel, layout: B.Layout, master: str | None = None) -> B.JobSummary:
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    progress = job.progress if job.progress is not None else sys.stderr.isatty()
    spark = session(master, progress)
    try:
        sc = spark.sparkContext
        sc.addFile(str(model.path))
        parallelism = max(1, sc.defaultParallelism)
        buckets = max(2 * parallelism, math.ceil(job.input.stat().st_size / BUCKET_BYTES))
        if layout.id_column is None:
            buckets = 1
        spark.conf.set("spark.sql.shuffle.partitions", str(buckets))
        df = read_input(spark, job, layout)
        key = F.pmod(F.xxhash64(F.col(layout.id_column)), F.lit(buckets)) if layout.id_column else F.lit(0)
        plots = job.plot_dir is not None
        task = GroupTask(
            layout=layout,
            model_file=model.path.name,
            local_path=str(model.path.resolve()),
            sha256=model.sha256,
            batch_windows=job.batch_windows,
            with_windows=plots,
        )
        res = (
            df.withColumn(BUCKET, key)
            .groupBy(BUCKET)
            .applyInArrow(group_function(task), schema=result_schema(layout, plots))
        )
        try:
            table = res.toArrow()
        except Exception as exc:
            raise _spark_error(exc) from None
    finally:
        if getattr(spark, "_rnnops_owned", True):
            with contextlib.suppress(Exception):
                spark.stop()
    return _write(job, model, layout, table, t0)


def _spark_error(exc: Exception) -> Exception:
    """A Spark failure as one line when it is the input's fault (a malformed CSV row), else as is."""
    text = str(exc)
    if "Malformed" in text or "FAILFAST" in text or "CSV" in text and "parse" in text.lower():
        line = next((ln for ln in text.splitlines() if "Malformed" in ln or "FAILFAST" in ln), text.splitlines()[0])
        return RnnopsError(f"Spark cannot read the input: {line.strip()[:300]} (feature columns must hold numbers)")
    return exc


def _write(job: B.ForecastJob, model: B.ForecastModel, layout: B.Layout, table: pa.Table, t0: float) -> B.JobSummary:
    table = table.sort_by("first")  # first appearance in the file: the local engine's order
    ok = table.filter(pc.is_null(table["error"]))
    bad = table.filter(pc.is_valid(table["error"]))
    m, H, T, L, F = ok.num_rows, layout.horizon, len(layout.targets), layout.lookback, len(layout.features)
    ids = ok["id"].to_pylist()
    future = _matrix(ok["future"], m, H, np.int64)
    K = 1 + len(layout.quantiles) if layout.quantiles else 1
    y = _matrix(ok["forecast"], m, H * T * K, np.float32).reshape(m, H, T, K)
    if K == 1:
        y = y[..., 0]
    if "window" in table.column_names:
        windows = _matrix(ok["window"], m, L * F, np.float32).reshape(m, L, F)
        wdates = _matrix(ok["window_dates"], m, L, np.int64)
    else:
        windows, wdates = np.zeros((m, 0, F), np.float32), np.zeros((m, 0), np.int64)
    errors = [
        B.SeriesError(sid, rows, message, first)
        for sid, rows, message, first in zip(
            bad["id"].to_pylist(), bad["rows"].to_pylist(), bad["error"].to_pylist(), bad["first"].to_pylist()
        )
    ]
    prepared = B.Prepared(
        ids=ids,
        first_pos=ok["first"].to_numpy(),
        rows=ok["rows"].to_numpy(),
        windows=windows,
        window_dates=wdates,
        future=future,
        errors=errors,
        mismatch=np.asarray(ok["mismatch"].to_numpy(zero_copy_only=False), dtype=bool),
    )
    if job.strict and errors:
        raise B.strict_error(errors, layout)
    step = max(1, job.batch_windows)
    slices = (slice(lo, min(m, lo + step)) for lo in range(0, m, step))
    return B.write_results(
        job,
        model,
        layout,
        prepared,
        ((s, y[s]) for s in slices),
        engine="spark",
        rows_read=int(pc.sum(table["rows"]).as_py() or 0),
        series=table.num_rows,
        started=t0,
    )


def _matrix(col: pa.Array | pa.ChunkedArray, m: int, k: int, dtype: npt.DTypeLike) -> np.ndarray:
    if m == 0:
        return np.zeros((0, k), dtype)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(m, k)
