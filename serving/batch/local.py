"""The local engine of ``rnnops forecast``: stream the input through :class:`SeriesTails`
(reading a chunk ahead in a thread), then run the model on the windows, several onnxruntime
calls at a time, and write the results. No torch: onnxruntime, numpy, pyarrow and pandas.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from rnnops.serving.batch.job import ForecastJob, ForecastModel, JobSummary, Layout, _progress
from rnnops.serving.batch.read import iter_input, prefetch
from rnnops.serving.batch.tails import Prepared, SeriesTails
from rnnops.serving.batch.write import strict_error, write_results
from rnnops.util import available_cpus

if TYPE_CHECKING:
    from rnnops.serving.runtime import Runtime


def make_runtime(model: ForecastModel, threads: int = 1) -> Runtime:
    """An onnxruntime session for the job, on the providers the serving config names (RNNOPS_PROVIDERS)."""
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.runtime import Runtime

    config = ServeConfig.from_env()
    return Runtime(
        model.path,
        providers=config.providers,
        iobinding=config.iobinding,
        threads=threads,
        name=f"{model.name}/{model.version}",
    )


def predict(runtime: Runtime, windows: np.ndarray, batch: int) -> np.ndarray:
    """Forecasts ``[m, H, T]``, or ``[m, H, T, 1 + levels]`` (forecast, then each quantile) for a model
    with prediction intervals: what the writer takes, from one onnxruntime call per chunk."""
    r = runtime.run(windows, max_batch=batch)
    return r.output if r.quantiles is None else np.concatenate([r.output[..., None], r.quantiles], axis=-1)


def forecast_batches(
    runtime: Runtime, prepared: Prepared, batch: int, workers: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """Forecasts for ``prepared.windows`` in slices of ``batch`` windows, ``workers`` onnxruntime
    calls at a time (one session, called from several threads; each call single-threaded:
    for small recurrent nets parallel batches scale better than intra-op threads).

    A series' forecast does not depend on which others share its call (tiny chunks, other
    worker counts and the Spark engine give the same bytes): ``Runtime`` runs a lone window as
    a pair on CPU, where onnxruntime's batch-of-one kernels differ in the last float32 bit."""
    m = len(prepared.windows)
    slices = [slice(lo, min(m, lo + batch)) for lo in range(0, m, batch)]
    if workers <= 1 or len(slices) <= 1:
        for s in slices:
            yield s, predict(runtime, prepared.windows[s], batch)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="rnnops-forecast") as pool:
        # bounded look-ahead keeps memory flat: at most 2 x workers batches in flight
        pending: list[tuple[slice, Future[np.ndarray]]] = []
        it = iter(slices)
        for s in it:
            pending.append((s, pool.submit(predict, runtime, prepared.windows[s], batch)))
            if len(pending) >= 2 * workers:
                s0, f0 = pending.pop(0)
                yield s0, f0.result()
        for s0, f0 in pending:
            yield s0, f0.result()


def run_local(job: ForecastJob, model: ForecastModel, layout: Layout) -> JobSummary:
    t0 = time.perf_counter()
    workers = job.workers or available_cpus()
    tails = SeriesTails(layout)
    if layout.fmt == "parquet":
        import pyarrow.parquet as pq

        total, unit = pq.ParquetFile(job.input).metadata.num_rows, "rows"
    else:
        total, unit = job.input.stat().st_size, "B"
    bar = _progress(job, total=total, unit=unit, unit_scale=True, desc="reading")
    done_prev = 0
    try:
        for batch, done in prefetch(iter_input(job.input, layout, job.chunk_rows)):
            tails.feed(batch, np.arange(tails.rows, tails.rows + batch.num_rows, dtype=np.int64))
            bar.update(done - done_prev)
            done_prev = done
            elapsed = time.perf_counter() - t0
            bar.set_postfix(
                rows=f"{tails.rows:,}",
                series=f"{tails.series:,}",
                rows_s=f"{tails.rows / max(elapsed, 1e-9):,.0f}",
                refresh=False,
            )
            if job.strict and tails.has_errors:
                raise strict_error(tails.errors(), layout)
    finally:
        bar.close()
    prepared = tails.finish()
    if job.strict and prepared.errors:
        raise strict_error(prepared.errors, layout)
    runtime = make_runtime(model, threads=1)
    return write_results(
        job,
        model,
        layout,
        prepared,
        forecast_batches(runtime, prepared, job.batch_windows, workers),
        engine="local",
        rows_read=tails.rows,
        series=tails.series,
        started=t0,
    )
