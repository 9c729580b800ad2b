"""A generated retail panel: the covariate benchmark's data (issue 25, section 5) and the tests'.

Daily unit sales of items in stores, in long format, one row per item x day:

- ``item_id`` (series id), ``date`` (daily), ``sales`` (counts, the target);
- ``store`` and ``category``: static columns (strings);
- ``promo`` (0/1) and ``price``: future covariates, known in advance.

How sales arise (so a model that reads the covariates can beat one that cannot):
``mean = level * weekly[category][weekday] * (price / list_price) ** -elasticity * (1 + lift * promo)``,
and ``sales ~ NegativeBinomial(mean, dispersion)`` (over-dispersed counts). Each item has its
own level (log-normal), list price and elasticity; each category its own weekly profile; promotions
run a few days at a time with a price cut. A share of the items (``short_fraction``, at least one
in a panel of ten or more) start late, with 3 to 6 weeks of history: the cold-start case.

Seeded (the same arguments give the same panel); rows are generated and written a block of items at
a time, so a large panel (100,000 series x 1,000 days) streams to Parquet without being held whole.

    python benchmarks/retail_panel.py --series 200 --days 365 --out retail.parquet
    python benchmarks/retail_panel.py --series 100000 --days 1000 --files 10 --out big/  # ~10^8 rows

Flags for training on it: ``--id-column item_id --date-column date --target sales
--static-columns store,category --future-covariates promo,price --freq D``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ID, DATE, TARGET = "item_id", "date", "sales"
STATIC = ("store", "category")
FUTURE = ("promo", "price")
START = "2023-01-02"  # a Monday
CATEGORIES = ("grocery", "household", "beverages", "personal_care", "snacks")


def _weekly_profiles(rng: np.random.Generator) -> np.ndarray:
    """A weekly multiplier per category, [categories, 7] with mean 1 (weekends busier, unevenly)."""
    base = np.array([0.85, 0.8, 0.85, 0.95, 1.15, 1.35, 1.05])
    prof = base[None, :] * np.exp(0.15 * rng.standard_normal((len(CATEGORIES), 7)))
    return prof / prof.mean(axis=1, keepdims=True)


def _block(
    rng: np.random.Generator,
    first: int,
    n: int,
    days: int,
    n_stores: int,
    weekly: np.ndarray,
    short_fraction: float,
    dispersion: float,
) -> dict[str, np.ndarray]:
    """Columns for items ``first .. first + n`` (each a flat array over item x day, items' rows in order)."""
    store = rng.integers(0, n_stores, n)
    category = rng.integers(0, len(CATEGORIES), n)
    level = np.exp(rng.normal(1.5, 0.8, n))  # mean units per day at list price
    list_price = np.round(np.exp(rng.normal(1.2, 0.6, n)), 2)
    elasticity = rng.uniform(1.0, 2.5, n)
    lift = rng.uniform(0.5, 1.5, n)
    # Promotions: start on ~4 % of days, run 3-7 days, with a 10-40 % price cut.
    starts = rng.random((n, days)) < 0.04
    length = rng.integers(3, 8, (n, days))
    promo = np.zeros((n, days), bool)
    for k in range(7):  # a promotion started at day d covers d .. d + length - 1
        promo[:, k:] |= starts[:, : days - k] & (length[:, : days - k] > k)
    cut = rng.uniform(0.1, 0.4, (n, 1))
    # Shelf price drifts slowly around the list price (+-5 %), and drops during promotions.
    drift = 1 + 0.05 * np.sin(
        2 * np.pi * (np.arange(days)[None, :] / rng.uniform(60, 180, (n, 1)) + rng.random((n, 1)))
    )
    price = np.round(list_price[:, None] * drift * np.where(promo, 1 - cut, 1.0), 2)
    weekday = (np.arange(days) + 0) % 7  # START is a Monday: day 0 is weekday 0
    mean = (
        level[:, None]
        * weekly[category][:, weekday]
        * (price / list_price[:, None]) ** -elasticity[:, None]
        * (1 + lift[:, None] * promo)
    )
    # Negative binomial with mean `mean` and shape `dispersion` (variance mean + mean^2 / dispersion).
    sales = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
    # Short histories: a few items start 3-6 weeks before the end.
    first_day = np.zeros(n, np.int64)
    n_short = int(round(short_fraction * n)) or (1 if short_fraction > 0 and n >= 10 else 0)
    short = rng.choice(n, n_short, replace=False)
    first_day[short] = days - rng.integers(21, 43, n_short)
    first_day = np.maximum(first_day, 0)
    keep = np.arange(days)[None, :] >= first_day[:, None]
    items = np.array([f"item_{first + i:06d}" for i in range(n)], dtype=object)
    rows_item = np.repeat(np.arange(n), days).reshape(n, days)[keep]
    day = np.tile(np.arange(days), n).reshape(n, days)[keep]
    return {
        ID: items[rows_item],
        DATE: np.datetime64(START, "ns") + day.astype("timedelta64[D]"),
        TARGET: sales[keep].astype(np.int64),
        "store": np.array([f"store_{s:02d}" for s in range(n_stores)], dtype=object)[store[rows_item]],
        "category": np.array(CATEGORIES, dtype=object)[category[rows_item]],
        "promo": promo[keep].astype(np.int8),
        "price": price[keep],
    }


def blocks(
    series: int = 200,
    days: int = 365,
    seed: int = 0,
    stores: int = 10,
    short_fraction: float = 0.05,
    dispersion: float = 5.0,
    block: int = 2000,
):
    """Yield the panel as column dicts of up to ``block`` items each. Each block has its own
    random stream (seeded by ``seed`` and its first item), so the panel is fixed by the arguments,
    ``block`` included."""
    rng = np.random.default_rng(seed)
    weekly = _weekly_profiles(rng)
    for first in range(0, series, block):
        n = min(block, series - first)
        yield _block(np.random.default_rng([seed, first]), first, n, days, stores, weekly, short_fraction, dispersion)


def generate(
    series: int = 200,
    days: int = 365,
    seed: int = 0,
    stores: int = 10,
    short_fraction: float = 0.05,
    dispersion: float = 5.0,
):
    """The whole panel as a pandas DataFrame (for tests and small benchmarks)."""
    import pandas as pd

    return pd.concat(
        [pd.DataFrame(b) for b in blocks(series, days, seed, stores, short_fraction, dispersion)], ignore_index=True
    )


def write(path: Path, **kwargs) -> int:
    """Write the panel to ``path`` (Parquet, or CSV by suffix) block by block; returns the rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    csv = path.suffix.lower() == ".csv"
    writer_class = pacsv.CSVWriter if csv else pq.ParquetWriter
    writer, rows = None, 0
    try:
        for b in blocks(**kwargs):
            if csv:  # dates as 2023-01-02, not as nanosecond timestamps
                b[DATE] = b[DATE].astype("datetime64[D]")
            table = pa.table(b)
            writer = writer or writer_class(str(path), table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def write_parts(folder: Path, files: int = 4, row_group_rows: int = 1 << 16, block: int = 2000, **kwargs) -> int:
    """Write the panel as ``files`` Parquet files in ``folder`` (``part-00000.parquet``, …), as Spark
    or Dask would: block ``i`` of items goes to file ``i % files``, each item's rows together and in
    date order (what ``--stream`` reads), in row groups of ``row_group_rows``; returns the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    rows = 0
    try:
        for i, b in enumerate(blocks(block=block, **kwargs)):
            table = pa.table(b)
            k = i % files
            if k not in writers:
                writers[k] = pq.ParquetWriter(str(folder / f"part-{k:05d}.parquet"), table.schema)
            writers[k].write_table(table, row_group_size=row_group_rows)
            rows += table.num_rows
    finally:
        for w in writers.values():
            w.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=200, help="items (series)")
    ap.add_argument("--days", type=int, default=365, help="days per full-length series")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stores", type=int, default=10)
    ap.add_argument("--short-fraction", type=float, default=0.05, help="share of items with 3-6 weeks of history")
    ap.add_argument("--out", type=Path, required=True, help="output file: .parquet or .csv (a directory with --files)")
    ap.add_argument("--files", type=int, default=1, help="write a directory of this many Parquet files (--stream)")
    args = ap.parse_args(argv)
    if args.series < 1 or args.days < 1:
        ap.error("--series and --days must be at least 1")
    panel = dict(
        series=args.series, days=args.days, seed=args.seed, stores=args.stores, short_fraction=args.short_fraction
    )
    rows = write_parts(args.out, args.files, **panel) if args.files > 1 else write(args.out, **panel)
    print(f"{args.out}: {rows} rows, {args.series} series", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
