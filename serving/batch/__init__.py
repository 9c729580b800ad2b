"""Batch forecast jobs: a long-format file in, one row per series x future timestamp x target out.

``rnnops forecast --model forecaster@champion --input data.csv --output out.parquet`` (see
docs/batch.md). The modules, in the order a job runs through them:

- :mod:`.job`: the job, the model, the input's layout (:func:`plan`), the summary, :func:`run`;
- :mod:`.read`: file formats, Arrow record batches of the input in chunks, dates, features;
- :mod:`.tails`: :class:`SeriesTails`, the per-series streaming state, and :class:`Prepared`,
  the windows and future timestamps it hands to the model;
- :mod:`.local`: the local engine (onnxruntime on this machine, several calls at a time);
- :mod:`.spark`: the Spark engine (groups of whole series through the same ``SeriesTails``);
- :mod:`.write`: output tables, the atomic writer, the error report, plots;
- :mod:`.cli`: the ``rnnops forecast`` command.

No torch here: onnxruntime (through :class:`~rnnops.serving.runtime.Runtime`), numpy, pyarrow and
pandas. This package re-exports the public names, so ``from rnnops.serving import batch as B``
and ``B.run(B.ForecastJob(...))`` work without knowing the modules.
"""

from rnnops.serving.batch.job import (
    DATE_NAMES,
    EXIT_SERIES_FAILED,
    FORECAST,
    MODEL,
    MODEL_VERSION,
    STEP,
    TARGET,
    ForecastJob,
    ForecastModel,
    JobSummary,
    Layout,
    describe,
    load_model,
    plan,
    run,
)
from rnnops.serving.batch.local import forecast_batches, make_runtime, run_local
from rnnops.serving.batch.read import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    feature_matrix,
    file_format,
    iter_input,
    parse_dates,
    prefetch,
    read_header,
)
from rnnops.serving.batch.tails import NAT, NONE, Prepared, SeriesError, SeriesTails
from rnnops.serving.batch.write import (
    AtomicWriter,
    date_type_for,
    errors_path_for,
    output_schema,
    output_table,
    plot_series,
    strict_error,
    write_errors,
    write_results,
)

__all__ = [
    "AtomicWriter",
    "CSV_SUFFIXES",
    "DATE_NAMES",
    "EXIT_SERIES_FAILED",
    "FORECAST",
    "ForecastJob",
    "ForecastModel",
    "JobSummary",
    "Layout",
    "MODEL",
    "MODEL_VERSION",
    "NAT",
    "NONE",
    "PARQUET_SUFFIXES",
    "Prepared",
    "STEP",
    "SeriesError",
    "SeriesTails",
    "TARGET",
    "date_type_for",
    "describe",
    "errors_path_for",
    "feature_matrix",
    "file_format",
    "forecast_batches",
    "iter_input",
    "load_model",
    "make_runtime",
    "output_schema",
    "output_table",
    "parse_dates",
    "plan",
    "plot_series",
    "prefetch",
    "read_header",
    "run",
    "run_local",
    "strict_error",
    "write_errors",
    "write_results",
]
