import numpy as np
import pytest

from rnnops.errors import RnnopsError
from rnnops.training import data as D


def test_text_split_and_vocab_round_trip(small_text):
    text = D.load_text(str(small_text))
    raw = small_text.read_text()
    assert len(text.train) == int(0.9 * len(raw))
    assert len(text.train) + len(text.val) == len(raw)
    assert text.vocab.decode(np.concatenate([text.train, text.val])) == raw
    assert text.vocab.chars == sorted(set(raw))


def test_tinyshakespeare_from_data_dir(data_dir):
    text = D.load_text("tinyshakespeare")
    assert len(text.vocab) == 65
    assert len(text.train) == 1003854 and len(text.val) == 111540


def test_bad_text_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(RnnopsError, match="empty"):
        D.load_text(str(empty))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(RnnopsError, match="not UTF-8"):
        D.load_text(str(latin))
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(RnnopsError, match="fewer than one training window"):
        D.load_text(str(short), min_chars=10)
    with pytest.raises(RnnopsError, match="unknown|no dataset"):
        D.load_text("no-such-dataset")


def test_missing_data_dir_file_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(tmp_path))
    with pytest.raises(RnnopsError, match="RNNOPS_DATA_DIR"):
        D.fetch("etth1")


def test_corrupted_dataset_is_refused(tmp_path, monkeypatch):
    (tmp_path / "ETTh1.csv").write_text("date,OT\n2020-01-01,1\n")
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(tmp_path))
    with pytest.raises(RnnopsError, match="sha256"):
        D.fetch("etth1")


def test_ett_splits_follow_the_protocol(data_dir):
    s = D.load_series("etth1", "M")
    assert s.feature_names == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert s.borders == (8640, 11520, 14400)
    assert s.split_range("val", 96) == (8640 - 96, 11520)
    assert s.split_range("test", 96) == (11520 - 96, 14400)
    starts = s.window_starts("test", 96, 96)
    assert len(starts) == 2880 - 96 + 1  # every stride-1 window, none dropped
    mean, std = s.scaler()
    train = s.values[:8640].astype(np.float64)
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, train.std(0), rtol=1e-5)
    single = D.load_series("etth1", "S")
    assert single.feature_names == ["OT"] and single.target_names == ["OT"]


def test_csv_detects_dates_and_targets(small_csv):
    s = D.load_series(str(small_csv), "M")
    assert s.feature_names == ["a", "b", "OT"] and s.target_names == ["a", "b", "OT"]
    assert s.dates is not None and s.borders == (420, 480, 600)
    s1 = D.load_series(str(small_csv), "S", target="b")
    assert s1.feature_names == ["b"]


def test_csv_bad_inputs(tmp_path, small_csv):
    import pandas as pd

    df = pd.read_csv(small_csv)
    df.loc[[5, 9], "b"] = np.nan
    nan_csv = tmp_path / "nan.csv"
    df.to_csv(nan_csv, index=False)
    with pytest.raises(RnnopsError, match=r"b at rows 5, 9.*--fill ffill"):
        D.load_series(str(nan_csv))
    filled = D.load_series(str(nan_csv), fill="ffill")
    assert np.isfinite(filled.values).all()
    text_only = tmp_path / "text.csv"
    text_only.write_text("date,name\n2024-01-01,a\n2024-01-02,b\n")
    with pytest.raises(RnnopsError, match="no numeric columns"):
        D.load_series(str(text_only))
    s = D.load_series(str(small_csv))
    with pytest.raises(RnnopsError, match="too few"):
        s.window_starts("val", 96, 96)
    with pytest.raises(RnnopsError, match="target column"):
        D.load_series(str(small_csv), target="nope")


def test_sine_is_generated_and_deterministic():
    a, b = D.make_sine(), D.make_sine()
    assert a.values.shape == (4000, 1)
    np.testing.assert_array_equal(a.values, b.values)


# ---------------------------------------------------------------- the data recipe (training/recipe.py)


def _old_windows(s: D.SeriesData, split: str, L: int, H: int):
    """The windows as export's quality gate cut them before recipes: stride 1, targets only in y."""
    starts = s.window_starts(split, L, H)
    x = s.values[starts[:, None] + np.arange(L)]
    y = s.values[starts[:, None] + L + np.arange(H)][:, :, s.target_indices]
    return x, y


@pytest.mark.parametrize("source", ["etth1", "csv"])
def test_a_series_recipe_round_trips_loads_and_cuts_the_old_windows(source, data_dir, small_csv):
    import json

    from rnnops.training.recipe import DataRecipe, prepare_series, recipe_from_job

    uri, L, H = ("etth1", 96, 24) if source == "etth1" else (str(small_csv), 24, 6)
    recipe, series = prepare_series(uri, "M", None, None, None, L, H)
    back = DataRecipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert back == recipe
    assert recipe.columns.target == series.target_names and recipe.columns.date == "date" and recipe.freq == "h"
    assert recipe.splits.borders == list(series.borders) and recipe.splits.context == L
    assert recipe.splits.rule == ("ETT 12/4/4 months" if source == "etth1" else "70/10/20")
    mean, std = series.scaler()
    assert recipe.scaling.mean == mean.tolist() and recipe.scaling.std == std.tolist()
    loaded = back.load()
    np.testing.assert_array_equal(loaded.values, series.values)
    for split in ("train", "val", "test"):
        w = back.windows(split)
        x, y = _old_windows(series, split, L, H)
        np.testing.assert_array_equal(w.x, x)
        np.testing.assert_array_equal(w.y, y)
    # a run logged before recipes: the recipe derived from its job.json and model spec is the same
    spec = {
        "kind": "forecaster",
        "dataset": {"name": series.name, "sha256": series.sha256},
        "config": {
            "lookback": L,
            "horizon": H,
            "feature_names": series.feature_names,
            "target_names": series.target_names,
        },
    }
    job = {"task": "forecast", "data": uri, "features": "M", "target": None, "date_column": None, "fill": None}
    assert recipe_from_job(job, spec)[0] == recipe
    assert recipe_from_job(None, {**spec, "dataset": {"name": uri, "sha256": series.sha256}})[0] == recipe


def test_a_recipe_refuses_data_that_is_not_the_runs(tmp_path, small_csv):
    import dataclasses

    import pandas as pd

    from rnnops.training.recipe import prepare_series, prepare_text, recipe_from_job

    recipe, _ = prepare_series(str(small_csv), "S", "b", None, None, 24, 6)
    assert recipe.columns.features == ["b"] and recipe.load().feature_names == ["b"]
    df = pd.read_csv(small_csv)
    df.loc[3, "b"] = 9.0
    df.to_csv(small_csv, index=False)  # the same path, other values
    with pytest.raises(RnnopsError, match="is not the data the run was trained on"):
        recipe.load()
    other = dataclasses.replace(recipe, splits=dataclasses.replace(recipe.splits, borders=[1, 2, 3]))
    with pytest.raises(RnnopsError, match="splits at"):
        dataclasses.replace(other, source=dataclasses.replace(other.source, sha256=recipe_sha(small_csv))).load()
    with pytest.raises(RnnopsError, match="records no dataset"):
        recipe_from_job({}, {"kind": "forecaster"})
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 100)
    r, data = prepare_text(str(text))
    assert r.splits.borders == [900, 1000] and r.eval_window == 256
    w = r.windows("val")
    assert w.x.shape == (1, 100) and (w.x[0] == data.val).all()  # a short split is one window
    assert r.windows("train").x.shape == (3, 257)


def recipe_sha(path):
    from rnnops.util import sha256_file

    return sha256_file(path)
