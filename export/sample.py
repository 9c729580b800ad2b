"""A forecaster's sample of validation data, embedded in its ONNX file and logged beside it.

The playground (``GET /models/{name}/sample``) offers it as "a window of the model's validation
data": ``lookback`` rows of context and the ``horizon`` rows that followed (the actuals the
forecast can be compared with), raw units, with timestamps when the data has dates.

It lives in the ONNX file's ``metadata_props`` under :data:`rnnops.contract.META_SAMPLE` (a
JSON string of a few kB: ETTh1 with lookback 96, horizon 96 and 7 features is 1,344 values,
~10 kB), so it travels wherever the model goes (registry, BentoML store, a copied file), is
covered by the file's sha256, and serving needs no second path to fetch it (an MLflow artifact
would need the tracking server at request time, and a local ``.onnx`` ref has none). It is also
logged to the run as ``export/sample.json``. Windows of more than :data:`MAX_VALUES` values are
not embedded (the page then takes a pasted or uploaded CSV).

A panel model's sample (:func:`panel_sample`, ``"kind": "panel"``) holds a few series instead:
each one's id, statics, timestamps, target history, actual values and covariates, what a
request to the model needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rnnops import contract
from rnnops.errors import RnnopsError

SAMPLE_FILE = "sample.json"
MAX_VALUES = 20_000


def _round(a: np.ndarray) -> list:
    """Values as JSON numbers with 6 significant digits (float32 carries ~7)."""
    return [[float(f"{v:.6g}") for v in row] for row in np.asarray(a, dtype=np.float64)]


def validation_sample(series, lookback: int, horizon: int, source: str | None = None) -> dict | None:
    """The middle validation window of ``series`` (a :class:`training.data.SeriesData`) as the
    sample dict, or None when it would exceed :data:`MAX_VALUES` values."""
    starts = series.window_starts("val", lookback, horizon)
    start = int(starts[len(starts) // 2])
    rows = series.values[start : start + lookback + horizon]
    if rows.size > MAX_VALUES:
        return None
    stamps = None
    if series.dates is not None:
        stamps = [str(t) for t in np.datetime_as_string(series.dates[start : start + lookback + horizon], unit="s")]
    return {
        "split": "val",
        "source": source or series.name,
        "start_row": start,
        "features": list(series.feature_names),
        "targets": list(series.target_names),
        "lookback": int(lookback),
        "horizon": int(horizon),
        "context_rows": int(lookback),
        "timestamps": stamps,
        "rows": _round(rows),
    }


def for_model(model, recipe, data=None) -> dict | None:
    """The sample of a forecaster's validation data as the run trained on it, from the run's data
    recipe (:func:`rnnops.training.recipe.run_recipe`; ``data``: already loaded, else read again
    and checked); RnnopsError when the data cannot be rebuilt exactly."""
    c = model.config
    series = data if data is not None else recipe.load()
    if list(series.feature_names) != list(c.feature_names):
        raise RnnopsError(f"the data's columns {series.feature_names} are not the model's {c.feature_names}")
    return validation_sample(series, c.lookback, c.horizon, recipe.source.uri)


def embed(path: str | Path, sample: dict) -> None:
    """Write ``sample`` into the ONNX file's metadata (replacing an older one); the graph is untouched."""
    import onnx

    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key != contract.META_SAMPLE]
    entries = [(p.key, p.value) for p in keep]
    del proto.metadata_props[:]
    for key, value in [*entries, (contract.META_SAMPLE, json.dumps(sample, separators=(",", ":")))]:
        e = proto.metadata_props.add()
        e.key, e.value = key, value
    onnx.save_model(proto, str(path), save_as_external_data=False)


def read(path: str | Path) -> dict | None:
    """The sample embedded in an ONNX file, or None."""
    from rnnops.onnx_metadata import metadata_props

    raw = metadata_props(Path(path)).get(contract.META_SAMPLE)
    return json.loads(raw) if raw else None


def write(model, recipe_of_run, onnx_path: Path, folder: Path) -> str:
    """Embed the sample in ``onnx_path`` and write ``folder/sample.json``; a one-line note of the result.
    ``recipe_of_run()`` gives the run's (recipe, data) or raises RnnopsError."""
    if model.kind != "forecaster":
        return "no sample (char model)"
    try:
        s = for_model(model, *recipe_of_run())
    except RnnopsError as exc:
        return f"no sample: {exc}"
    if s is None:
        return f"no sample: the window is over {MAX_VALUES:,} values"
    embed(onnx_path, s)
    (folder / SAMPLE_FILE).write_text(json.dumps(s))
    return f"sample: {len(s['rows'])} validation rows from row {s['start_row']}"


# ----------------------------------------------------------------------------- panel forecasters

PANEL_SERIES = 4  # series in a panel model's sample, spread over the panel


def panel_sample(contract, panel, source: str | None = None, n_series: int = PANEL_SERIES) -> dict | None:
    """A few series' validation windows as the playground needs them to call a panel model: per
    series its id, statics (raw: category text, numbers), the ``lookback`` timestamps before the
    validation split and the ``horizon`` in it, the target over the lookback (null where missing
    or before the series starts) and the actual values that followed, the past covariates over
    the lookback and the future covariates over both. Series are dropped (the last first) until
    the sample holds at most :data:`MAX_VALUES` values; None when not even one fits."""
    cut = panel.splits().train_end
    candidates = np.flatnonzero(cut >= 1)
    if not len(candidates):
        return None
    picked = candidates[np.unique(np.linspace(0, len(candidates) - 1, min(n_series, len(candidates))).astype(int))]
    L, H = contract.lookback, contract.horizon
    past_index = {n: i for i, n in enumerate(panel.spec.past_covariates)}
    future_index = {n: i for i, n in enumerate(panel.spec.future_covariates)}
    series = []
    for i in picked:
        rows = panel.rows(int(i))
        c = int(cut[i])
        start = max(0, c - L)
        history, horizon = slice(rows.start + start, rows.start + c), slice(rows.start + c, rows.start + c + H)
        both = slice(history.start, horizon.stop)
        statics = {}
        for s in panel.static:
            v = s.values[i]
            statics[s.name] = (
                (s.vocabulary[int(v) - 1] if int(v) >= 1 else None) if s.kind == "categorical" else _num(v)
            )
        series.append(
            {
                "id": panel.ids[i],
                "static": statics,
                "timestamps": [str(t) for t in np.datetime_as_string(panel.timestamps[both], unit="s")],
                "context": int(c - start),  # the first `context` timestamps are history, the rest the horizon
                "target": [_num(v) for v in panel.target[history, 0]],
                "actual": [_num(v) for v in panel.target[horizon, 0]],
                "past_covariates": {
                    n: [_num(v) for v in panel.past[history, past_index[n]]] for n in contract.past_covariates
                },
                "future_covariates": {
                    n: [_num(v) for v in panel.future[both, future_index[n]]] for n in contract.future_covariates
                },
            }
        )
    while series and _values(series) > MAX_VALUES:
        series.pop()
    if not series:
        return None
    return {
        "split": "val",
        "kind": "panel",
        "source": source or panel.source,
        "target": contract.target,
        "freq": contract.freq,
        "lookback": int(L),
        "horizon": int(H),
        "series": series,
    }


def _num(v) -> float | None:
    """A JSON number (6 significant digits), or null for a missing value."""
    v = float(v)
    return float(f"{v:.6g}") if np.isfinite(v) else None


def _values(series: list[dict]) -> int:
    n = 0
    for s in series:
        n += len(s["timestamps"]) + len(s["target"]) + len(s["actual"])
        n += sum(len(v) for v in s["past_covariates"].values()) + sum(len(v) for v in s["future_covariates"].values())
    return n


def write_panel(contract, recipe_of_run, onnx_path: Path, folder: Path) -> str:
    """:func:`write` for a panel model: embed :func:`panel_sample` and write ``folder/sample.json``."""
    try:
        recipe, panel = recipe_of_run()
    except RnnopsError as exc:
        return f"no sample: {exc}"
    s = panel_sample(contract, panel, recipe.source.uri)
    if s is None:
        return f"no sample: no series has a validation window of at most {MAX_VALUES:,} values"
    embed(onnx_path, s)
    (folder / SAMPLE_FILE).write_text(json.dumps(s))
    return f"sample: {len(s['series'])} series' validation windows"
