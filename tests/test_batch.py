"""Batch forecast jobs (``rnnops forecast``): the local engine, the Spark engine, bad input.

One real forecaster for the whole module, made by the real pipeline: train (tiny, on a
generated 3-column CSV) -> export_run -> register_run -> promote -> resolve, in a temporary
MLflow store. Every job here resolves ``forecaster@champion`` through the registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pytest.importorskip("onnxruntime")

import pyarrow.parquet as pq  # noqa: E402

from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.serving import batch as B  # noqa: E402

LOOKBACK, HORIZON = 24, 6
FEATURES = ["a", "b", "OT"]


# ----------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A registered, promoted forecaster (GRU, windowed, L=24, H=6, targets a, b, OT)."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("batch-registry")
    n = 600
    t = np.arange(n)
    train_csv = root / "train.csv"
    pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "a": np.sin(t / 8.0),
            "b": np.cos(t / 13.0) + 0.001 * t,
            "OT": np.sin(t / 8.0 + 1.0) * 2 + 5,
        }
    ).to_csv(train_csv, index=False)
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RNNOPS_CACHE", str(root / "cache"))
        mp.setenv("RNNOPS_CHECKPOINTS", str(root / "checkpoints"))
        mp.chdir(root)
        import mlflow

        mlflow.set_tracking_uri(uri)
        from rnnops.export.pipeline import export_run
        from rnnops.registry.api import promote, register_run
        from rnnops.registry.resolve import resolve
        from rnnops.training.jobs import forecast_job, run_job

        job = forecast_job(str(train_csv), "gru", "tiny", {"lookback": LOOKBACK, "horizon": HORIZON, "train.steps": 10})
        run_id = run_job(job)
        export_run(run_id, progress=False)
        version = register_run(run_id)
        promote(version.name, version.version)
        resolved = resolve("forecaster@champion")
        assert resolved.metadata["feature_names"] == FEATURES and resolved.metadata["horizon"] == HORIZON
        yield resolved
        while mlflow.active_run():
            mlflow.end_run()


def long_frame(series: dict[str, tuple[int, str]], seed: int = 0) -> pd.DataFrame:
    """Long format: {id: (rows, freq)} -> id, date, a, b, OT (grouped by id, in time order)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, (sid, (rows, freq)) in enumerate(series.items()):
        t = np.arange(rows)
        dates = pd.date_range("2024-03-01", periods=rows, freq=freq)
        parts.append(
            pd.DataFrame(
                {
                    "store": sid,
                    "date": dates.strftime("%Y-%m-%d %H:%M:%S"),
                    "a": np.sin(t / 8.0 + k),
                    "b": np.cos(t / 13.0) + 0.01 * k,
                    "OT": np.sin(t / 8.0 + 1 + k) * 2 + 5 + 0.1 * rng.standard_normal(rows),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


SERIES = {"s1": (60, "h"), "s2": (40, "h"), "s10": (100, "15min"), "s3": (30, "D"), "s4": (30, "MS")}


def job(tmp_path, inp, out="out.csv", **kw) -> B.ForecastJob:
    kw.setdefault("progress", False)
    return B.ForecastJob(model="forecaster@champion", input=Path(inp), output=tmp_path / out, id_column="store", **kw)


def run_job(j, engine="local"):
    return B.run(j, engine=engine)


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch-data") / "long.csv"
    long_frame(SERIES).to_csv(path, index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    return pd.read_csv(path, dtype={"store": str})


# ----------------------------------------------------------------------------- local engine


def test_local_output_schema_timestamps_and_numbers(champion, good_csv, tmp_path):
    summary = run_job(job(tmp_path, good_csv))
    assert (
        summary.failed == 0
        and summary.series == len(SERIES)
        and summary.rows_read == sum(n for n, _ in SERIES.values())
    )
    assert summary.errors_path is None and not (tmp_path / "out.errors.csv").exists()
    out = read(tmp_path / "out.csv")
    assert list(out.columns) == ["store", "date", "step", "target", "forecast", "model", "model_version"]
    assert len(out) == len(SERIES) * HORIZON * len(FEATURES) == summary.output_rows
    assert list(dict.fromkeys(out["store"])) == list(SERIES)  # order of first appearance
    assert (out["model"] == "forecaster").all() and (out["model_version"] == champion.version).all()
    assert list(out["target"][:3]) == FEATURES and list(out["step"][:6]) == [1, 1, 1, 2, 2, 2]

    frame = long_frame(SERIES)
    from rnnops.serving.runtime import Runtime

    rt = Runtime(champion.path)
    windows = np.stack([frame[frame.store == s][FEATURES].to_numpy(np.float32)[-LOOKBACK:] for s in SERIES])
    want = rt.run(windows).output
    for k, (sid, (_rows, freq)) in enumerate(SERIES.items()):
        got = out[out.store == sid]
        last = pd.Timestamp(frame[frame.store == sid]["date"].iloc[-1])
        expected_dates = pd.date_range(last, periods=HORIZON + 1, freq=freq)[1:]
        assert list(pd.to_datetime(got["date"].iloc[::3])) == list(expected_dates), sid  # h, 15min, D and MS
        np.testing.assert_allclose(got["forecast"].to_numpy().reshape(HORIZON, 3), want[k], rtol=1e-6, atol=1e-6)
    # the model was trained on hourly data: the 15-min, daily and monthly series are flagged (not failed)
    assert summary.freq_mismatch == 2  # 15min, D (monthly steps are calendar ones: not compared)


def test_parquet_in_and_out_with_shorter_horizon(champion, good_csv, tmp_path):
    pq_in = tmp_path / "long.parquet"
    pq.write_table(pa.Table.from_pandas(long_frame(SERIES), preserve_index=False), pq_in)
    run_job(job(tmp_path, good_csv, "full.csv"))
    summary = run_job(job(tmp_path, pq_in, "short.parquet", horizon=2, progress=True))  # bars on stderr
    table = pq.read_table(tmp_path / "short.parquet")
    assert table.schema.field("step").type == pa.int32() and table.schema.field("forecast").type == pa.float32()
    assert pa.types.is_timestamp(table.schema.field("date").type)
    short, full = table.to_pandas(), read(tmp_path / "full.csv")
    assert len(short) == summary.output_rows == len(SERIES) * 2 * 3
    full2 = full[full.step <= 2].reset_index(drop=True)
    np.testing.assert_array_equal(short["forecast"].to_numpy(), full2["forecast"].to_numpy(np.float32))
    assert list(short["store"]) == list(full2["store"])


def test_chunk_boundaries_and_interleaved_series_give_the_same_output(champion, good_csv, tmp_path):
    run_job(job(tmp_path, good_csv, "big.csv"))
    run_job(job(tmp_path, good_csv, "tiny.csv", chunk_rows=7, batch_windows=2, workers=2))
    assert (tmp_path / "big.csv").read_bytes() == (tmp_path / "tiny.csv").read_bytes()
    # rows of different series interleaved (sorted by time, as a table dump often is)
    frame = long_frame(SERIES)
    inter = tmp_path / "interleaved.csv"
    frame.assign(_t=pd.to_datetime(frame["date"])).sort_values(["_t", "store"], kind="stable").drop(
        columns="_t"
    ).to_csv(inter, index=False)
    run_job(job(tmp_path, inter, "inter.csv", chunk_rows=11))
    a = read(tmp_path / "big.csv").sort_values(["store", "step", "target"]).reset_index(drop=True)
    b = read(tmp_path / "inter.csv").sort_values(["store", "step", "target"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_single_series_without_id_column_and_plots(champion, tmp_path):
    one = long_frame({"x": (50, "h")}).drop(columns="store")
    one.to_csv(tmp_path / "one.csv", index=False)
    j = B.ForecastJob(
        model="forecaster@champion",
        input=tmp_path / "one.csv",
        output=tmp_path / "one_out.csv",
        progress=False,
        plot_dir=tmp_path / "plots",
        plot_max=1,
    )
    summary = B.run(j)
    out = read(tmp_path / "one_out.csv")
    assert list(out.columns) == ["date", "step", "target", "forecast", "model", "model_version"]
    assert len(out) == HORIZON * 3
    assert [p.name for p in summary.plots] == ["00000_series.png"] and summary.plots[0].stat().st_size > 1000


# ----------------------------------------------------------------------------- bad input


def bad_frame() -> pd.DataFrame:
    series = {k: (40, "h") for k in ["ok1", "short", "nan", "baddate", "gap", "dup", "back", "ok2", "oldnan"]}
    series["short"] = (10, "h")
    f = long_frame(series)
    rows = lambda sid: f.index[f.store == sid]  # noqa: E731
    f.loc[rows("nan")[-3], "OT"] = np.nan  # inside the window the model reads
    f.loc[rows("oldnan")[2], "b"] = np.nan  # outside it: harmless
    f.loc[rows("baddate")[5], "date"] = "31/02/2024 25:00"
    f = f.drop(rows("gap")[-4])  # one hour missing inside the window
    dup = rows("dup")
    f.loc[dup[20], "date"] = f.loc[dup[19], "date"]
    back = rows("back")
    f.loc[back[30], "date"] = "2024-03-01 00:30:00"
    f.loc[len(f)] = {"store": None, "date": "2024-03-01 00:00:00", "a": 1.0, "b": 1.0, "OT": 1.0}
    return f


EXPECTED_ERRORS = {
    "short": "only 10 rows; the model reads the last 24",
    "nan": "OT is missing (NaN) at 2024-03-02 13:00:00, within the last 24 rows that the model reads",
    "baddate": "unparsable date '31/02/2024 25:00'",
    "gap": "irregular timestamps: a step of 2h from 2024-03-02 11:00:00 to 2024-03-02 13:00:00",
    "dup": "timestamp 2024-03-01 19:00:00 repeats",
    "back": "timestamps go back: 2024-03-01 00:30:00 comes after 2024-03-02 05:00:00",
    "": "1 rows have no store",
}


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch-bad") / "bad.csv"
    bad_frame().to_csv(path, index=False)
    return path


def check_report(path: Path):
    report = pd.read_csv(path, dtype={"store": str}, keep_default_na=False)
    assert list(report.columns) == ["store", "rows", "error"]
    got = dict(zip(report["store"], report["error"]))
    assert set(got) == set(EXPECTED_ERRORS), got
    for sid, start in EXPECTED_ERRORS.items():
        assert got[sid].startswith(start), (sid, got[sid])
    return report


def test_bad_series_are_reported_and_the_rest_written(champion, bad_csv, tmp_path):
    from typer.testing import CliRunner

    from rnnops.cli import app

    res = CliRunner().invoke(
        app,
        [
            "forecast",
            "--input",
            str(bad_csv),
            "--output",
            str(tmp_path / "out.csv"),
            "--id-column",
            "store",
            "--no-progress",
        ],
    )
    assert res.exit_code == B.EXIT_SERIES_FAILED, res.output
    assert "7 series failed" in res.output and "out.errors.csv" in res.output
    out = read(tmp_path / "out.csv")
    assert sorted(set(out["store"])) == ["ok1", "ok2", "oldnan"]
    report = check_report(tmp_path / "out.errors.csv")
    assert list(report["store"]) == ["short", "nan", "baddate", "gap", "dup", "back", ""]  # file order


def test_strict_fails_and_writes_nothing(champion, bad_csv, tmp_path):
    with pytest.raises(RnnopsError, match=r"--strict: \d+ series cannot be forecast: series '.*nothing was written"):
        run_job(job(tmp_path, bad_csv, strict=True))
    assert sorted(os.listdir(tmp_path)) == []


def test_stale_error_report_is_removed_by_a_clean_run(champion, good_csv, tmp_path):
    (tmp_path / "out.errors.csv").write_text("store,rows,error\nold,1,old\n")
    run_job(job(tmp_path, good_csv))
    assert not (tmp_path / "out.errors.csv").exists()


def test_file_level_errors_are_one_clear_line(champion, good_csv, tmp_path):
    frame = long_frame({"s": (30, "h")})
    frame.drop(columns=["b"]).to_csv(tmp_path / "nob.csv", index=False)
    with pytest.raises(RnnopsError, match=r"lacks columns \(the model's features: b\).*it has store, date, a, OT"):
        run_job(job(tmp_path, tmp_path / "nob.csv"))
    with pytest.raises(RnnopsError, match=r"--id-column: series"):
        B.run(B.ForecastJob(model="forecaster@champion", input=good_csv, output=tmp_path / "o.csv", id_column="series"))
    frame.rename(columns={"date": "when"}).to_csv(tmp_path / "nodate.csv", index=False)
    with pytest.raises(RnnopsError, match="no date column found"):
        run_job(job(tmp_path, tmp_path / "nodate.csv"))
    with pytest.raises(RnnopsError, match=f"this model forecasts 1 to {HORIZON} steps"):
        run_job(job(tmp_path, good_csv, horizon=HORIZON + 1))
    frame.assign(a="x").to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(RnnopsError, match="cannot read .*text.csv.*feature columns must hold numbers"):
        run_job(job(tmp_path, tmp_path / "text.csv"))
    with pytest.raises(RnnopsError, match="use a .csv"):
        run_job(job(tmp_path, good_csv, "out.json"))
    with pytest.raises(RnnopsError, match="--freq 'fortnightly' is not a pandas frequency"):
        run_job(job(tmp_path, good_csv, freq="fortnightly"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def test_a_model_that_is_not_a_forecaster_is_refused(tmp_path):
    from test_runtime import export_char

    path, _ = export_char(tmp_path / "char.onnx")
    with pytest.raises(RnnopsError, match="is a char, not a forecaster"):
        B.run(B.ForecastJob(model=str(path), input=tmp_path / "x.csv", output=tmp_path / "y.csv"))


def test_bad_model_reference_gives_the_one_reference_message(tmp_path):
    from rnnops.refs import GRAMMAR

    for ref in ("forecaster/latest", "bentoml:no good", "models:/"):
        with pytest.raises(RnnopsError) as info:
            B.run(B.ForecastJob(model=ref, input=tmp_path / "x.csv", output=tmp_path / "y.csv"))
        assert str(info.value).startswith(f"cannot read model reference {ref!r}") and GRAMMAR in str(info.value)


def test_bentoml_store_reference(champion, good_csv, tmp_path):
    """`rnnops forecast --model bentoml:TAG` (the grammar `rnnops serve` takes): the champion pulled
    into a BentoML store gives the same forecasts as the registry reference. A fresh process, as
    BentoML reads BENTOML_HOME once."""
    pytest.importorskip("bentoml")
    import sys
    import textwrap

    out = tmp_path / "bento.csv"
    script = textwrap.dedent(f"""
        import sys
        from rnnops.cli import main
        from rnnops.registry.bento import pull

        tag = pull("forecaster@champion").tag
        print("TAG", tag)
        sys.argv = ["rnnops", "forecast", "--model", "bentoml:" + tag, "--input", {str(good_csv)!r},
                    "--output", {str(out)!r}, "--id-column", "store", "--no-progress"]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
    """)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"TAG forecaster:v{champion.version}-{champion.sha256[:12]}" in proc.stdout
    run_job(job(tmp_path, good_csv, "registry.csv"))
    a, b = read(out), read(tmp_path / "registry.csv")
    assert (a["model"] == "forecaster").all() and a[
        "model_version"
    ].isna().all()  # a store model has no registry version
    cols = ["store", "date", "step", "target", "forecast"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_given_freq_is_checked(champion, good_csv, tmp_path):
    summary = run_job(job(tmp_path, good_csv, freq="h"))
    report = pd.read_csv(tmp_path / "out.errors.csv", dtype={"store": str})
    assert summary.failed == 3 and list(report["store"]) == ["s10", "s3", "s4"]
    assert report["error"][0].startswith("timestamps are not h apart: 15min from 2024-03-01")


def test_output_is_atomic(champion, good_csv, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    out.write_text("previous complete output\n")
    from rnnops.serving.batch import write as W

    real = W.output_table
    calls = []

    def fail_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(W, "output_table", fail_on_second)
    with pytest.raises(RuntimeError, match="simulated"):
        run_job(job(tmp_path, good_csv, batch_windows=2, workers=1))
    assert out.read_text() == "previous complete output\n"  # untouched, no half-written file under its name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # and no temporary left behind


# ----------------------------------------------------------------------------- Spark


def spark_available() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'rnnops[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (bash scripts/ensure_java.sh)"
    try:
        subprocess.run(["java", "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "`java -version` failed (bash scripts/ensure_java.sh)"
    return None


@pytest.mark.slow
def test_spark_engine_matches_local(champion, bad_csv, good_csv, tmp_path):
    reason = spark_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the Spark test must run there)", pytrace=False)
        pytest.skip(reason)
    # good and bad series in one file: same rows, same order, same errors, same numbers
    both = pd.concat([long_frame(SERIES), bad_frame()], ignore_index=True)
    both.to_csv(tmp_path / "both.csv", index=False)
    local = run_job(job(tmp_path, tmp_path / "both.csv", "local.parquet", chunk_rows=50))
    spark = run_job(
        job(tmp_path, tmp_path / "both.csv", "spark.parquet", plot_dir=tmp_path / "plots", plot_max=2), engine="spark"
    )
    assert (
        (spark.series, spark.failed, spark.output_rows, spark.rows_read)
        == (local.series, local.failed, local.output_rows, local.rows_read)
        == (15, 7, 8 * HORIZON * 3, len(both))
    )
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "spark.parquet")
    assert a.schema == b.schema and a.equals(b)
    assert (tmp_path / "local.errors.csv").read_text() == (tmp_path / "spark.errors.csv").read_text()
    check_report(tmp_path / "spark.errors.csv")
    assert len(spark.plots) == 2
