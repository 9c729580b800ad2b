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
