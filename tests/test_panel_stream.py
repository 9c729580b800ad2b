"""Panels larger than memory (training/panel_stream.py, training/panel_stream_task.py): small
generated Parquet panels in a few files, read in tiny batches and row groups so that series cross
every boundary there is.

- The streaming index holds what the in-memory reader finds (ids, lengths, static vocabularies,
  short series), and series read back equal the in-memory rows.
- Bad input is the same one line as the in-memory reader's, file and row included; a series whose
  rows are not together, and a CSV, are one line too.
- The sampler visits every chunk once per pass, only in its shard; ranks' shards are disjoint.
- Scores merged over blocks equal scores over the whole panel.
- ``rnnops train forecast --stream`` logs the same metrics (names and, with a buffer that holds the
  whole panel, values) as the in-memory run; with tiny buffers it still trains and scores every
  series; ``--nproc 2`` trains one run over two shards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from rnnops.errors import RnnopsError
from rnnops.training import distributed
from rnnops.training import forecast_metrics as fm
from rnnops.training.panel import PanelSpec, read_panel
from rnnops.training.panel_stream import StreamSampler, index_panel, should_stream

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
import retail_panel  # noqa: E402
from test_panel_cli import COLUMNS, COVARIATES, WINDOWS, rnnops  # noqa: E402
from test_panel_data import hand_panel  # noqa: E402
from test_panel_data import spec as hand_spec  # noqa: E402  (test_panel_data's spec of the hand panel)

# 30 items x 60 days in 3 files of blocks of 10 items, row groups of 128 rows (a series is 60 rows
# or fewer, so many series cross a row group); one item of each block has 3 to 6 weeks only
PANEL_ARGS = dict(series=30, days=60, seed=7, block=10)
SPEC = PanelSpec(
    "item_id",
    "date",
    "sales",
    horizon=7,
    lookback=28,
    static_columns="store,category",
    future_covariates="promo,price",
    freq="D",
)


@pytest.fixture(scope="module")
def panel_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stream") / "panel"
    retail_panel.write_parts(folder, files=3, row_group_rows=128, **PANEL_ARGS)
    return folder


# --------------------------------------------------------------------------- the index


def test_the_index_finds_what_the_in_memory_reader_finds(panel_dir):
    index = index_panel(panel_dir, SPEC, block_rows=50)  # batches smaller than a series: carried over
    panel = read_panel(panel_dir, SPEC)  # a directory reads in memory too
    assert len(index.files) == 3 and index.n_series == panel.n_series == 30
    assert index.ids == panel.ids and (index.lengths == panel.lengths).all()
    assert (index.freq, index.season, index.calendar_names) == (panel.freq, panel.season, panel.calendar_names)
    assert index.too_short == panel.too_short and len(index.too_short) >= 1
    assert index.summary() == panel.summary()
    for mine, theirs in zip(index.static, panel.static):
        assert (mine.kind, mine.vocabulary) == (theirs.kind, theirs.vocabulary)
        assert (mine.values == theirs.values).all()
    assert (index.splits().val_end == panel.splits().val_end).all()
    # series read back (across files and row groups) are the in-memory rows, with the whole panel's codes
    some = [20, 3, 11, 4]
    part = index.load(some)
    assert part.ids == tuple(panel.ids[i] for i in sorted(some))
    rows = np.concatenate([np.arange(panel.offsets[i], panel.offsets[i + 1]) for i in sorted(some)])
    np.testing.assert_array_equal(part.target, panel.target[rows])
    np.testing.assert_array_equal(part.future, panel.future[rows])
    np.testing.assert_array_equal(part.timestamps, panel.timestamps[rows])
    assert [s.values.tolist() for s in part.static] == [s.values[sorted(some)].tolist() for s in panel.static]


def sorted_hand_panel() -> pd.DataFrame:
    """test_panel_data's hand panel, sorted by id then day (as streaming needs)."""
    return hand_panel().sort_values(["id", "day"], kind="stable").reset_index(drop=True)


def _duplicate(df):
    return pd.concat([df, df[df["id"] == "B"].head(2)]).sort_values(["id"], kind="stable").reset_index(drop=True)


def _not_numeric(df):
    df["sales"] = [None if pd.isna(v) else str(v) for v in df["sales"]]  # a text column in the file
    df.loc[40, "sales"] = "n/a"
    return df


def _future_missing(df):
    df.loc[df.index[df["id"] == "B"][3], "promo"] = np.nan
    return df


def _null_id(df):
    df["id"] = df["id"].astype(object)
    df.loc[57, "id"] = None
    return df


def _negative(df):
    df.loc[df["id"] == "C", "sales"] = -1.0
    return df


def _gap(df):
    return df.drop(df.index[(df["id"] == "B") & (df["day"] == "2024-01-10")]).reset_index(drop=True)


def _static_changes(df):
    df.loc[df.index[df["id"] == "A"][4], "store"] = "s9"
    return df


@pytest.mark.parametrize(
    "change, kw, expected",
    [
        (_duplicate, {}, "2 duplicate (id, day) rows in bad.parquet"),
        (_not_numeric, {}, "target 'sales' in bad.parquet is not numeric: row 40 holds 'n/a'"),
        (_future_missing, {}, "future covariate 'promo' is missing at 1 step of bad.parquet (first: series 'B'"),
        (_null_id, {}, "1 row of bad.parquet has no id in 'id' (first at row 57)"),
        (_negative, {"likelihood": "negbin"}, "negative target (first: series 'C'"),
        (_gap, {}, "series 'B' jumps from 2024-01-09 to 2024-01-11"),
        (_static_changes, {}, "static column 'store' changes within series 'A'"),
        (lambda df: df, {"lookback": 40}, "no series of bad.parquet is long enough for lookback 40 + horizon 3"),
        (lambda df: df, {"future_covariates": "price"}, "column 'price' (--future-covariates) is not in bad.parquet"),
    ],
    ids=["duplicate", "not-numeric", "future-missing", "null-id", "negbin", "gap", "static", "too-short", "column"],
)
def test_bad_input_is_the_in_memory_readers_one_line(tmp_path, change, kw, expected):
    path = tmp_path / "bad.parquet"
    change(sorted_hand_panel()).to_parquet(path, index=False, row_group_size=16)
    spec = hand_spec(**kw)
    with pytest.raises(RnnopsError) as in_memory:
        read_panel(path, spec)
    with pytest.raises(RnnopsError) as streamed:
        index_panel(path, spec, block_rows=20)
    assert expected in str(in_memory.value), in_memory.value
    assert str(streamed.value) == str(in_memory.value)  # the same line, rows of the same file
    assert "\n" not in str(streamed.value)


def test_what_only_streaming_refuses_is_one_line(tmp_path):
    df = sorted_hand_panel()
    apart = pd.concat([df[df["id"] == "A"].head(10), df[df["id"] != "A"], df[df["id"] == "A"].iloc[10:]])
    path = tmp_path / "apart.parquet"
    apart.to_parquet(path, index=False)
    with pytest.raises(RnnopsError) as info:
        index_panel(path, hand_spec(), block_rows=16)
    assert str(info.value) == (
        "series 'A' of the panel has rows at row 0 of apart.parquet and again at row 41 of apart.parquet; "
        "streaming reads each series as one run of rows: sort the panel by id then date (each series in one "
        "file), or train without --stream"
    )
    read_panel(path, hand_spec())  # the in-memory reader takes rows in any order
    csv = tmp_path / "panel.csv"
    df.to_csv(csv, index=False)
    with pytest.raises(RnnopsError, match="--stream reads Parquet .* not panel.csv"):
        index_panel(csv, hand_spec())
    (tmp_path / "empty").mkdir()
    with pytest.raises(RnnopsError, match="no Parquet files"):
        index_panel(tmp_path / "empty", hand_spec())


def test_stream_is_chosen_by_size_unless_asked(panel_dir, monkeypatch, tmp_path):
    from rnnops.training import panel_stream
    from rnnops.training.jobs import panel_job

    assert not should_stream(panel_dir)  # 1,700 rows
    monkeypatch.setattr(panel_stream, "available_memory", lambda: 100_000)  # 100 kB free: would not fit
    assert should_stream(panel_dir) and should_stream(next(panel_dir.iterdir()))
    assert not should_stream("m4-hourly") and not should_stream(tmp_path / "x.csv")
    flags = {"id_column": "item_id", "date_column": "date", "targets": "sales", "horizon": 7}
    assert panel_job(str(panel_dir), "tiny", flags).stream
    assert not panel_job(str(panel_dir), "tiny", {**flags, "stream": False}).stream  # --no-stream
    csv = tmp_path / "panel.csv"
    retail_panel.write(csv, series=2, days=40)
    assert not panel_job(str(csv), "tiny", flags).stream
    with pytest.raises(RnnopsError) as info:
        panel_job(str(csv), "tiny", {**flags, "stream": True})
    assert str(info.value) == (
        f"--stream reads a Parquet panel (a file or a directory of files), not {csv}: convert it, or drop --stream"
    )
    with pytest.raises(RnnopsError, match="a streamed panel does not take it yet: give --no-stream"):
        panel_job(str(panel_dir), "tiny", {**flags, "stream": True, "init_from": "parent", "parent_run": "abc"})


# --------------------------------------------------------------------------- sampling, shards, scores


def test_the_sampler_reads_every_chunk_once_a_pass_and_only_its_shard(panel_dir):
    index = index_panel(panel_dir, SPEC)
    series = distributed.shard(np.arange(index.n_series), 1, 2)  # rank 1 of 2: odd series
    low, high = np.full(len(series), 28), np.full(len(series), 40)
    sampler = StreamSampler(index, series, low, high, lambda p: p, seed=0, chunk_rows=100, buffer_chunks=2)
    try:
        sampler.steps_per_buffer = 1
        n_chunks = len(sampler.chunks)
        assert n_chunks >= 4 and all(index.rows[series[c]].sum() <= 100 or len(c) == 1 for c in sampler.chunks)
        seen = []
        for _ in range(n_chunks):  # two chunks a buffer: two passes, every chunk once in each
            buffer = sampler.current()
            assert buffer.panel.ids == tuple(index.ids[i] for i in series[buffer.positions])
            seen += buffer.positions.tolist()
        assert sorted(seen) == sorted(2 * list(range(len(series))))
        assert all(int(index.ids.index(i)) % 2 == 1 for i in buffer.panel.ids)
    finally:
        sampler.close()


def test_shards_are_disjoint_and_cover_the_series():
    series = np.arange(3, 40)
    shards = [distributed.shard(series, r, 3) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == series.tolist()
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    assert all((s % 3 == r).all() for r, s in enumerate(shards))


def test_scores_merged_over_blocks_equal_scores_at_once():
    rng = np.random.default_rng(0)
    histories = [rng.gamma(2, 5, n) for n in rng.integers(30, 80, 40)]
    actual = rng.gamma(2, 5, (40, 6))
    actual[3, 2] = np.nan
    point = actual + rng.normal(0, 2, actual.shape)
    q = np.sort(point[..., None] + rng.normal(0, 3, (40, 6, len(fm.GLUONTS_QUANTILES))), axis=-1)
    kw = dict(lower=point - 4, upper=point + 4, quantile_forecasts=q)
    naive2 = fm.baseline_scores(histories, actual, 7)["naive2"]
    whole = fm.evaluate(histories, actual, point, 7, naive2=naive2, **kw)
    parts, base = [], []
    for b in (slice(0, 7), slice(7, 30), slice(30, 40)):
        part_kw = {k: v[b] for k, v in kw.items()}
        total = float(np.nansum(np.abs(actual[b])))
        parts.append((fm.evaluate(histories[b], actual[b], point[b], 7, **part_kw), total))
        base.append((fm.baseline_scores(histories[b], actual[b], 7)["naive2"], total))
    merged = fm.merge_scores(parts, fm.merge_scores(base))
    for key, value in whole.as_dict().items():
        assert merged.as_dict()[key] == pytest.approx(value, rel=1e-12), key


# --------------------------------------------------------------------------- the command


def _runs() -> dict:
    return {
        r.data.params["stream"]: r
        for r in mlflow.search_runs(experiment_names=["rnnops-forecast"], output_format="list")
    }


def test_a_streamed_run_logs_what_the_in_memory_run_logs(mlflow_env, panel_dir, monkeypatch, capsys):
    from rnnops.training import panel_stream_task

    # scored a few series at a time; the training buffer holds the whole panel, so the batches are
    # the in-memory run's and so are the weights
    monkeypatch.setattr(panel_stream_task, "EVAL_BLOCK_ROWS", 150)
    args = ["train", "forecast", "--data", str(panel_dir), *COLUMNS, *COVARIATES, *WINDOWS, "--backtest", "2"]
    for flag in ("--stream", "--no-stream"):
        code, err = rnnops(monkeypatch, capsys, *args, flag)
        assert code == 0, err
        assert ("(streamed from 3 Parquet file(s))" in err) == (flag == "--stream")
    runs = _runs()
    streamed, in_memory = runs["True"], runs["False"]
    assert streamed.data.metrics["stream_buffers_read"] == 1
    ours = {k: v for k, v in streamed.data.metrics.items() if not k.startswith(("stream_", "system/"))}
    theirs = {k: v for k, v in in_memory.data.metrics.items() if not k.startswith("system/")}
    assert set(ours) == set(theirs) and {"test_owa", "val_mase", "backtest_1/wql", "test_naive2_owa"} <= set(ours)
    for key, value in theirs.items():
        if key not in ("train_seconds", "windows_per_s", "train_loss", "lr", "steps"):
            assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    recipes = [mlflow.artifacts.load_dict(f"runs:/{r.info.run_id}/config/recipe.json") for r in (streamed, in_memory)]
    assert recipes[0]["splits"] == recipes[1]["splits"] and recipes[0]["source"] == recipes[1]["source"]
    short = mlflow.artifacts.load_dict(f"runs:/{streamed.info.run_id}/data/too_short.json")
    assert short["count"] == streamed.data.metrics["too_short_series"] >= 1


def test_a_streamed_run_with_small_buffers_trains_on_every_part(mlflow_env, panel_dir, monkeypatch, capsys):
    from rnnops.training import panel_stream_task

    monkeypatch.setattr(
        panel_stream_task,
        "StreamSampler",
        partial(StreamSampler, chunk_rows=100, buffer_chunks=2, steps_per_buffer=3),
    )
    monkeypatch.setattr(panel_stream_task, "EVAL_SERIES", 5)
    code, err = rnnops(
        monkeypatch, capsys, "train", "forecast", "--data", str(panel_dir), *COLUMNS, *COVARIATES, *WINDOWS, "--stream"
    )
    assert code == 0, err
    assert "(streamed from 3 Parquet file(s))" in err
    m = _runs()["True"].data.metrics
    assert m["stream_buffers_read"] == 7  # 20 steps, a new buffer every 3
    assert m["test_n_series"] == 30 and m["val_n_series"] == 30  # the final scores cover every series
    assert np.isfinite([m["test_owa"], m["test_wql"], m["val_mase"]]).all()


@pytest.mark.slow
def test_two_processes_train_one_run_on_two_shards(tmp_path, panel_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RNNOPS_CHECKPOINTS": str(tmp_path / "ckpt")}
    cmd = [sys.executable, "-c", "from rnnops.cli import main; main()", "train", "forecast", "--data", str(panel_dir)]
    cmd += [*COLUMNS, *COVARIATES, *WINDOWS, "--stream", "--nproc", "2", "--experiment", "ddp"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "training in 2 processes" in proc.stderr and proc.stdout.count("run id:") == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rnnops.world_size"] == "2"
    assert run.data.metrics["steps"] == 20 and run.data.metrics["test_n_series"] == 30
