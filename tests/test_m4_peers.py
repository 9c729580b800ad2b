"""benchmarks/m4_peers.py's scoring path (no peer installs, no training): a forecast written in the
peers' file format (benchmarks/peers/m4_peer_io.py), rows in any order, is read back in our series
order and scored by forecast_metrics exactly as our own baselines are; the table names every row."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "peers"))


@pytest.fixture
def m4(monkeypatch, tmp_path):
    env = os.environ.get("RNNOPS_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "m4" / "Hourly-train.csv").is_file():
        reason = f"M4 Hourly not found under {path}/m4 (set RNNOPS_DATA_DIR to the folder holding m4/Hourly-*.csv)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the M4 files are there)", pytrace=False)
        pytest.skip(reason)
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(path))
    import m4_peers

    return m4_peers.M4(tmp_path)


def test_a_peer_forecast_file_is_scored_as_our_own_baseline(m4, tmp_path):
    import m4_peer_io

    from rnnops.training import forecast_metrics as fm

    train = m4_peer_io.read_train(m4.train_csv)  # what the peers read: the training part only
    assert train["unique_id"].nunique() == len(m4.ids) == 414
    assert len(train) == sum(len(x) for x in m4.insample)
    snaive = np.stack([fm.seasonal_naive(x, 48, 24) for x in m4.insample])
    path = tmp_path / "peer.csv"
    m4_peer_io.write_forecasts(path, m4.ids, 48, {0.5: snaive, 0.025: snaive - 1.0, 0.975: snaive + 1.0})
    shuffled = pd.read_csv(path).sample(frac=1.0, random_state=0)  # a peer may write rows in any order
    shuffled.to_csv(path, index=False)

    scores = m4.score(m4.read_forecasts(path))
    expected = m4.baselines["seasonal_naive"].as_dict()
    for metric in ("smape", "mase", "owa"):
        assert scores[metric] == pytest.approx(expected[metric], rel=1e-12)
    assert 0.0 < scores["coverage"] < 1.0 and scores["msis"] > 0

    shuffled.iloc[:-1].to_csv(path, index=False)  # one row short: refused, not scored
    with pytest.raises(ValueError, match="rows"):
        m4.read_forecasts(path)


def test_the_table_has_our_seeds_their_median_and_the_peers():
    import m4_peers

    def s(owa):
        return {"smape": 10.0, "mase": 1.0, "owa": owa, "msis": 9.0, "coverage": 0.9}

    res = {
        "preset": "quick",
        "ours": [
            {"seed": k, "train_s": 300.0, "predict_s": 0.5, "steps": 2000, "forecasts": f"ours-seed{k}.csv"}
            for k in range(3)
        ],
        "peers": {
            "statsforecast": {"version": "x", "rows": {"statsforecast-AutoETS": {"train_s": 9.0, "predict_s": 1.0}}}
        },
        "scores": {
            "ours-seed0": s(0.5),
            "ours-seed1": s(0.6),
            "ours-seed2": s(0.4),
            "ours-ensemble": s(0.45),
            "statsforecast-AutoETS": s(0.7),
        },
        "baselines": {"seasonal_naive": s(0.628), "naive2": s(1.0)},
        "load": {"ours seed 0": {"min": 3.0, "median": 4.0, "max": 5.0}},
        "skipped": {"gluonts": "no virtualenv"},
        "uptime_before": "up",
        "uptime_after": "up",
        "cores": 2,
    }
    text = m4_peers.markdown(res)
    assert "**0.500** (0.400–0.600)" in text  # the median OWA of the seeds, with their range
    assert "statsforecast AutoETS x" in text and "gluonts: no virtualenv" in text
    assert "| 3.0–5.0 |" in text
