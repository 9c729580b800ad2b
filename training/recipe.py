"""The data recipe: how a run's data is made, saved with the run as ``config/recipe.json``.

A :class:`DataRecipe` says everything needed to rebuild exactly the data a run was trained and
scored on: the source (a named dataset, a file path or a generator, with the sha256 of what was
read), the columns and their roles, the frequency, the splits and the scaling, and the windows
(lookback and horizon, or the char protocol's evaluation window). :meth:`DataRecipe.load` reads the
data again and refuses, in one line, data that is not the run's (another file, other columns,
other splits); :meth:`DataRecipe.windows` cuts a split into the windows the run was scored on.

Who uses it: training makes it (:func:`prepare_text`, :func:`prepare_series`) and logs it beside
``config/job.json``; export's quality gate and the playground sample read it back
(:func:`run_recipe`). A run logged before recipes existed has none: :func:`recipe_from_job`
derives it from its ``config/job.json`` and logged model, the one place that knows the old layout.

A new kind of dataset (a panel with ids and covariates, a new file format) adds its loader to
:mod:`rnnops.training.data`, a ``prepare_*`` function here, and fills the roles of
:class:`Columns` it uses; the consumers go through ``load()`` and ``windows()`` unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnnops.errors import RnnopsError
from rnnops.training import data as D
from rnnops.training.panel import NAMED_PANELS, Panel, PanelSpec, panel_files, read_panel

RECIPE_ARTIFACT = "config/recipe.json"
FORMAT = 1
TEXT_TRAIN_FRACTION = 0.9  # nanoGPT's split (training.data.load_text)
EVAL_WINDOW = 256  # char protocol: validation cut into 256-char windows, each from a zero state


@dataclass(frozen=True)
class Source:
    name: str  # what the run calls its data: "etth1", "tinyshakespeare", a file's stem, "sine"
    uri: str  # what load() reads: a named dataset, a file path as given, or "sine" (generated)
    sha256: str  # of the file as read (of the generated values for "sine")


@dataclass(frozen=True)
class Columns:
    """The roles of a series' columns. Single series fill target, features and date; the other
    roles are for panels (several series, covariates) and stay empty until those are read."""

    target: list[str]  # what the model forecasts, in output order
    features: list[str]  # what the model reads, in input order (the targets among them)
    date: str | None = None  # the timestamp column, when the data has one
    id: str | None = None  # panels: the series id column
    static: list[str] = field(default_factory=list)  # panels: per-series constants
    past_covariates: list[str] = field(default_factory=list)  # known up to now only
    future_covariates: list[str] = field(default_factory=list)  # known for the horizon too


@dataclass(frozen=True)
class Splits:
    rule: str  # how the borders were chosen, in words (e.g. "ETT 12/4/4 months", "70/10/20")
    borders: list[int]  # where train, val (and test) end: characters (text) or rows (series)
    context: int = 0  # series: rows val and test start early so their first window has a full lookback
    # panels: per series (in the panel's order) its id, length and where train and val end (positions
    # within the series); test is the rest. Borders are empty: each series splits on its own.
    series: dict | None = None


@dataclass(frozen=True)
class Scaling:
    method: str  # "zscore": mean and population std of each feature over the training rows
    mean: list[float]
    std: list[float]  # a constant feature's std is 1


@dataclass(frozen=True)
class Windows:
    """A split cut into the windows a run is scored on."""

    x: np.ndarray  # text: int64 [N, width + 1] (inputs + next char); series: float32 [N, lookback, features]
    y: np.ndarray | None  # series: float32 [N, horizon, targets] (raw units); text: None
    starts: np.ndarray  # the first character / row of each window


@dataclass(frozen=True)
class DataRecipe:
    kind: str  # "text" | "series" | "panel"
    source: Source
    splits: Splits
    columns: Columns | None = None  # series
    freq: str | None = None  # series: pandas' frequency string of the dates ("h"), when inferable
    fill: str | None = None  # series: "ffill" when missing values were filled forward
    scaling: Scaling | None = None  # series
    lookback: int | None = None  # series windows
    horizon: int | None = None
    eval_window: int | None = None  # text: characters per evaluation window
    calendar: list[str] | None = None  # panels: the calendar features computed from freq (rnnops.calendar)
    backtest: dict | None = None  # panels: {"windows": N, "step": S} rolling origins scored, or None

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DataRecipe:
        if d.get("format") != FORMAT:
            raise RnnopsError(
                f"data recipe format {d.get('format')!r} is not this version's ({FORMAT}): upgrade rnnops"
            )
        parts = {"source": Source, "splits": Splits, "columns": Columns, "scaling": Scaling}
        values = {k: v for k, v in d.items() if k != "format"}
        for key, typ in parts.items():
            if values.get(key) is not None:
                values[key] = typ(**values[key])
        return cls(**values)

    # ------------------------------------------------------------------ data

    def load(self) -> D.TextData | D.SeriesData | Panel:
        """The data, read again; RnnopsError when it is not the data this recipe describes."""
        if self.kind == "panel":
            return self._load_panel()
        if self.kind == "text":
            data = D.load_text(self.source.uri)
        else:
            c = self.columns
            single = len(c.features) == 1 and c.features == c.target
            data = D.load_series(self.source.uri, "S" if single else "M", c.target[-1], c.date, self.fill)
            if list(data.feature_names) != list(c.features):
                raise RnnopsError(f"the data's columns {data.feature_names} are not the run's {c.features}")
        if data.sha256 != self.source.sha256:
            raise RnnopsError(
                f"{self.source.uri} is not the data the run was trained on "
                f"(sha256 {data.sha256[:12]}… vs {self.source.sha256[:12]}…)"
            )
        borders = _text_borders(data) if self.kind == "text" else list(data.borders)
        if borders != list(self.splits.borders):
            raise RnnopsError(f"{self.source.uri} splits at {borders}, the run at {self.splits.borders}")
        return data

    def windows(self, split: str, data: D.TextData | D.SeriesData | None = None) -> Windows:
        """Every window of ``split`` as the run scores it: non-overlapping ``eval_window``-character
        windows (text; a short split is one window), or every stride-1 window (series)."""
        if self.kind == "panel":  # series differ in length: one window per series and origin
            raise RnnopsError(
                "a panel recipe has no stride-1 windows: cut them with training.panel.Panel.window and "
                "training.panel_train.PanelWindows (one origin per series)"
            )
        data = data if data is not None else self.load()
        if self.kind == "text":
            ids = {"train": data.train, "val": data.val}.get(split)
            if ids is None:
                raise RnnopsError(f"a text has train and val splits, not {split!r}")
            x, starts = text_windows(ids, self.eval_window or EVAL_WINDOW)
            return Windows(x, None, starts)
        L, H = int(self.lookback), int(self.horizon)
        starts = data.window_starts(split, L, H)
        tidx = data.target_indices
        x = data.values[starts[:, None] + np.arange(L)]
        y = data.values[starts[:, None] + L + np.arange(H)][:, :, tidx]
        return Windows(x, y, starts)

    def panel_spec(self) -> PanelSpec:
        """Panels: the reader's spec for this recipe's columns, frequency and windows."""
        c = self.columns
        return PanelSpec(
            c.id,
            c.date,
            tuple(c.target),
            horizon=int(self.horizon),
            lookback=int(self.lookback),
            static_columns=tuple(c.static),
            future_covariates=tuple(c.future_covariates),
            past_covariates=tuple(c.past_covariates),
            freq=self.freq,
            calendar_features=bool(self.calendar),
        )

    def _load_panel(self) -> Panel:
        panel = read_panel(self.source.uri, self.panel_spec())
        sha = panel_sha256(self.source.uri)
        if sha != self.source.sha256:
            raise RnnopsError(
                f"{self.source.uri} is not the panel the run was trained on (sha256 {sha[:12]}… vs "
                f"{self.source.sha256[:12]}…)"
            )
        return panel

    def target_scale(self) -> np.ndarray:
        """Series: the training split's std of each target (errors are scored on the z-scored scale)."""
        c = self.columns
        std = np.asarray(self.scaling.std, dtype=np.float32)
        return std[[c.features.index(t) for t in c.target]]


# ---------------------------------------------------------------------- making recipes


def prepare_text(uri: str, min_chars: int = 2, eval_window: int = EVAL_WINDOW) -> tuple[DataRecipe, D.TextData]:
    """Load a text (a named dataset or a file) and describe it: (recipe, data)."""
    text = D.load_text(uri, min_chars=min_chars)
    recipe = DataRecipe(
        kind="text",
        source=Source(text.name, uri, text.sha256),
        splits=Splits(f"first {TEXT_TRAIN_FRACTION:.0%} train, the rest val", _text_borders(text)),
        eval_window=eval_window,
    )
    return recipe, text


def prepare_series(
    uri: str,
    features: str = "M",
    target: str | None = None,
    date_column: str | None = None,
    fill: str | None = None,
    lookback: int = 96,
    horizon: int = 96,
) -> tuple[DataRecipe, D.SeriesData]:
    """Load a series (a named dataset, a CSV or ``sine``) and describe it: (recipe, data)."""
    series = D.load_series(uri, features, target, date_column, fill)
    mean, std = series.scaler()
    ett = tuple(series.borders) == D.ETT_BORDERS
    recipe = DataRecipe(
        kind="series",
        source=Source(series.name, uri, series.sha256),
        splits=Splits("ETT 12/4/4 months" if ett else "70/10/20", list(series.borders), context=int(lookback)),
        columns=Columns(target=list(series.target_names), features=list(series.feature_names), date=series.date_column),
        freq=infer_freq(series.dates),
        fill=fill,
        scaling=Scaling("zscore", mean.tolist(), std.tolist()),
        lookback=int(lookback),
        horizon=int(horizon),
    )
    return recipe, series


def panel_sha256(uri: str) -> str:
    """The sha256 a panel run records: of the file, or for a named panel of its files' sha256s."""
    import hashlib

    from rnnops.util import sha256_file

    if uri in NAMED_PANELS:
        from rnnops.training.m4 import TEST_DATASET, TRAIN_DATASET

        return hashlib.sha256((D.DATASETS[TRAIN_DATASET].sha256 + D.DATASETS[TEST_DATASET].sha256).encode()).hexdigest()
    path = Path(uri).expanduser()
    if path.is_dir():  # a panel in several Parquet files: of their names and sha256s, in name order
        files = panel_files(path)
        return hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()
    return sha256_file(path)


def prepare_panel(uri: str, spec: PanelSpec, backtest: int = 0, step: int | None = None) -> tuple[DataRecipe, Panel]:
    """Read and check a panel (a CSV or Parquet file, or a named panel) and describe it: (recipe,
    panel). Every problem in the input is one RnnopsError line (:func:`read_panel`)."""
    panel = read_panel(uri, spec)
    return panel_recipe(uri, spec, panel, backtest, step), panel


def panel_recipe(uri: str, spec: PanelSpec, panel, backtest: int = 0, step: int | None = None) -> DataRecipe:
    """The recipe of a checked panel: ``panel`` a :class:`Panel`, or the streaming reader's
    :class:`~rnnops.training.panel_stream.PanelIndex` (the same ids, lengths, splits, frequency and
    calendar, without the values)."""
    splits = panel.splits()
    name = uri if uri in NAMED_PANELS else Path(uri).stem
    recipe = DataRecipe(
        kind="panel",
        source=Source(name, uri, panel_sha256(uri)),
        splits=Splits(
            f"per series by time (M4): the last {spec.horizon} steps test, the {spec.horizon} before validation",
            [],
            series={
                "ids": list(panel.ids),
                "length": panel.lengths.tolist(),
                "train_end": splits.train_end.tolist(),
                "val_end": splits.val_end.tolist(),
            },
        ),
        columns=Columns(
            target=list(spec.targets),
            features=list(spec.targets) + list(spec.past_covariates) + list(spec.future_covariates),
            date=spec.date_column,
            id=spec.id_column,
            static=list(spec.static_columns),
            past_covariates=list(spec.past_covariates),
            future_covariates=list(spec.future_covariates),
        ),
        freq=panel.freq,
        scaling=Scaling("per window, inside the model (panel_model.PanelForecaster.window_scaling)", [], []),
        lookback=int(spec.lookback),
        horizon=int(spec.horizon),
        calendar=list(panel.calendar_names),
        backtest={"windows": int(backtest), "step": int(step or spec.horizon)} if backtest else None,
    )
    return recipe


def recipe_from_job(job: dict | None, spec: dict) -> tuple[DataRecipe, D.TextData | D.SeriesData]:
    """The recipe of a run logged without one, from its ``config/job.json`` (``job``, None if it has
    none) and its logged model's spec, with the data: (recipe, data). RnnopsError when the data
    cannot be rebuilt exactly (another file, other columns)."""
    job = job or {}
    dataset = spec.get("dataset") or {}
    uri = job.get("data") or dataset.get("name")
    if not uri:
        raise RnnopsError("the run records no dataset")
    if spec.get("kind") == "char":
        recipe, data = prepare_text(uri)
    else:
        c = spec.get("config") or {}
        names = c.get("feature_names") or []
        features = job.get("features") or ("S" if len(names) == 1 else "M")
        targets = c.get("target_names") or []
        target = job.get("target") or (targets[-1] if features == "S" and targets else None)
        recipe, data = prepare_series(
            uri,
            features,
            target,
            job.get("date_column"),
            job.get("fill"),
            int(c.get("lookback", 96)),
            int(c.get("horizon", 96)),
        )
        if names and list(data.feature_names) != list(names):
            raise RnnopsError(f"the data's columns {data.feature_names} are not the model's {names}")
    if dataset.get("sha256") and dataset["sha256"] != data.sha256:
        raise RnnopsError(
            f"{uri} is not the data the run was trained on (sha256 {data.sha256[:12]}… vs {dataset['sha256'][:12]}…)"
        )
    return recipe, data


def run_recipe(run_id: str | None, spec: dict) -> tuple[DataRecipe, D.TextData | D.SeriesData]:
    """A logged run's recipe and its data: its ``config/recipe.json``, or, for a run logged before
    recipes (or a model folder with no run), the one derived from its job (:func:`recipe_from_job`)."""
    if run_id:
        saved = _artifact(run_id, RECIPE_ARTIFACT)
        if saved is not None:
            recipe = DataRecipe.from_dict(saved)
            return recipe, recipe.load()
    return recipe_from_job(_artifact(run_id, "config/job.json") if run_id else None, spec)


# ---------------------------------------------------------------------- helpers


def text_windows(ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``width`` inputs (+1 target) and their starts; a short split is one window."""
    width = min(width, len(ids) - 1)
    n = (len(ids) - 1) // width
    starts = np.arange(n) * width
    return ids[starts[:, None] + np.arange(width + 1)], starts


def infer_freq(dates) -> str | None:
    """pandas' frequency of the first 100 dates, or None (no dates, too few, or irregular)."""
    if dates is None or len(dates) < 3:
        return None
    import pandas as pd

    return pd.infer_freq(pd.DatetimeIndex(dates[:100]))


def _text_borders(text: D.TextData) -> list[int]:
    return [len(text.train), len(text.train) + len(text.val)]


def _artifact(run_id: str, path: str) -> dict | None:
    """A JSON artifact of the run, or None when it has none."""
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except Exception:  # absent (an older or hand-made run), or unreadable: the caller falls back
        return None
