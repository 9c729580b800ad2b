"""The global panel forecaster's ONNX contract: the metadata entry ``rnnops.panel`` (issue 25, §3).

A panel model (``rnnops.kind`` = ``"panel"``) forecasts one target for any series of a panel from
the series' last ``lookback`` observations, its covariates and its static attributes. Its graph
takes raw values (scaling happens inside the model, per window), so serving needs no fitted
scaler and no model-specific code: everything it must build, from a request's timestamps,
context, covariates and statics, is described here, the way ``rnnops.state`` describes state.

Graph inputs (``B`` windows; ``L`` = lookback, ``H`` = horizon). A role with no columns has no
input in the graph, and its name is absent from :attr:`PanelContract.inputs`:

- ``past_target``     float32 ``[B, L]``: raw target values, oldest first; NaN where missing,
  and before the series' first observation (a short history is left-padded with NaN).
- ``past_covariates`` float32 ``[B, L, n_past]``: raw values of the past covariates (known only up
  to now), in ``past_covariates`` order; NaN where missing or before the series starts.
- ``known_past``      float32 ``[B, L, n_known]`` and ``known_future`` float32 ``[B, H, n_known]``:
  the *known* inputs over the lookback and over the horizon: the future covariates (raw), then the
  calendar features (:func:`rnnops.calendar.compute` of each step's timestamp), in
  :attr:`PanelContract.known_names` order; 0 at lookback steps before the series' first
  observation (what training feeds there).
- ``static_cat``      int64 ``[B, n_cat]``: per categorical static column, ``1 + i`` for the
  ``i``-th entry of its vocabulary, ``0`` for a category the model never saw (the unknown bucket).
- ``static_real``     float32 ``[B, n_real]``: numeric static columns, raw.

Graph outputs: ``forecast`` float32 ``[B, H]`` (the median, raw units) and ``quantiles`` float32
``[B, H, Q]`` at :attr:`PanelContract.quantiles` (raw units, non-decreasing along Q).

No torch and no onnxruntime here: export writes this entry, serving and batch jobs read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rnnops.metadata_limits import MAX_DIM, MAX_NAMES, MAX_VOCAB, MetadataError, check_name, check_names

KIND = "panel"  # rnnops.kind of a global panel forecaster
META_KEY = "panel"  # the metadata entry: "rnnops.panel"

PAST_TARGET = "past_target"
PAST_COVARIATES = "past_covariates"
KNOWN_PAST = "known_past"
KNOWN_FUTURE = "known_future"
STATIC_CAT = "static_cat"
STATIC_REAL = "static_real"
FORECAST = "forecast"
QUANTILES = "quantiles"
BATCH = "batch"  # the batch dimension, as rnnops.state writes it


@dataclass(frozen=True)
class StaticCategorical:
    """A categorical static column and the categories the model was trained on."""

    name: str
    vocabulary: tuple[str, ...]
    _codes: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_codes", {v: i + 1 for i, v in enumerate(self.vocabulary)})

    def code(self, category: object) -> int:
        """``1 + index`` of ``category`` (compared as a string), or 0: the unknown bucket."""
        return self._codes.get(str(category), 0)


@dataclass(frozen=True)
class PanelContract:
    target: str  # the forecast column's name
    freq: str  # pandas frequency of the panel (rnnops.calendar reads it)
    season: int  # the seasonal period (24 hourly, 7 daily...; 1: none)
    lookback: int
    horizon: int
    quantiles: tuple[float, ...]  # the levels of the "quantiles" output, increasing
    past_covariates: tuple[str, ...] = ()
    future_covariates: tuple[str, ...] = ()
    calendar: tuple[str, ...] = ()  # rnnops.calendar feature names, in input order
    static_categorical: tuple[StaticCategorical, ...] = ()
    static_real: tuple[str, ...] = ()
    # The fewest observed target values a series needs: 0 means the model forecasts a series with
    # no history at all from its statics and future covariates (cold start).
    min_history: int = 1

    @property
    def known_names(self) -> tuple[str, ...]:
        """The columns of known_past / known_future: future covariates, then calendar features."""
        return self.future_covariates + self.calendar

    @property
    def inputs(self) -> dict[str, tuple[tuple[int | str, ...], str]]:
        """Graph input name -> (shape with "batch", dtype), for the inputs this model has."""
        L, H = self.lookback, self.horizon
        n_known, n_cat = len(self.known_names), len(self.static_categorical)
        shapes: dict[str, tuple[tuple[int | str, ...], str]] = {PAST_TARGET: ((BATCH, L), "float32")}
        if self.past_covariates:
            shapes[PAST_COVARIATES] = ((BATCH, L, len(self.past_covariates)), "float32")
        if n_known:
            shapes[KNOWN_PAST] = ((BATCH, L, n_known), "float32")
            shapes[KNOWN_FUTURE] = ((BATCH, H, n_known), "float32")
        if n_cat:
            shapes[STATIC_CAT] = ((BATCH, n_cat), "int64")
        if self.static_real:
            shapes[STATIC_REAL] = ((BATCH, len(self.static_real)), "float32")
        return shapes

    @property
    def outputs(self) -> dict[str, tuple[tuple[int | str, ...], str]]:
        return {
            FORECAST: ((BATCH, self.horizon), "float32"),
            QUANTILES: ((BATCH, self.horizon, len(self.quantiles)), "float32"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "freq": self.freq,
            "season": self.season,
            "lookback": self.lookback,
            "horizon": self.horizon,
            "quantiles": list(self.quantiles),
            "past_covariates": list(self.past_covariates),
            "future_covariates": list(self.future_covariates),
            "calendar": list(self.calendar),
            "static_categorical": [{"name": s.name, "vocabulary": list(s.vocabulary)} for s in self.static_categorical],
            "static_real": list(self.static_real),
            "min_history": self.min_history,
            # informative (derived from the above; readers recompute them): the graph's signature
            "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
            "outputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.outputs.items()},
        }

    @classmethod
    def from_json(cls, d: object) -> PanelContract:
        """The contract of a decoded ``rnnops.panel`` entry; :class:`MetadataError` (one line,
        naming the field) when it is malformed. The entry is untrusted input: every name, size
        and count is bounded (rnnops.contract's limits)."""
        f = "rnnops.panel"
        if not isinstance(d, dict):
            raise MetadataError(f"{f} must be an object, not {type(d).__name__}")

        def size(key: str, low: int = 1) -> int:
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_DIM:
                raise MetadataError(f"{f}.{key} must be an integer in {low}..{MAX_DIM}, not {v!r}"[:200])
            return v

        def names(key: str) -> tuple[str, ...]:
            return tuple(check_names(f"{f}.{key}", d.get(key, [])))

        levels = d.get("quantiles")
        if (
            not isinstance(levels, list)
            or not 0 < len(levels) <= 99
            or not all(isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 for q in levels)
            or any(a >= b for a, b in zip(levels, levels[1:]))
        ):
            raise MetadataError(f"{f}.quantiles must be 1-99 increasing levels strictly between 0 and 1")
        cats = d.get("static_categorical", [])
        if not isinstance(cats, list) or len(cats) > MAX_NAMES:
            raise MetadataError(f"{f}.static_categorical must be a list of at most {MAX_NAMES} columns")
        static_categorical = []
        for i, c in enumerate(cats):
            if not isinstance(c, dict):
                raise MetadataError(f"{f}.static_categorical[{i}] must be an object {{name, vocabulary}}")
            vocab = c.get("vocabulary")
            if not isinstance(vocab, list) or len(vocab) > MAX_VOCAB:
                raise MetadataError(f"{f}.static_categorical[{i}].vocabulary must be a list of at most {MAX_VOCAB}")
            static_categorical.append(
                StaticCategorical(
                    check_name(f"{f}.static_categorical[{i}].name", c.get("name")),
                    tuple(check_name(f"{f}.static_categorical[{i}].vocabulary[{j}]", v) for j, v in enumerate(vocab)),
                )
            )
        contract = cls(
            target=check_name(f"{f}.target", d.get("target")),
            freq=check_name(f"{f}.freq", d.get("freq")),
            season=size("season"),
            lookback=size("lookback"),
            horizon=size("horizon"),
            quantiles=tuple(float(q) for q in levels),
            past_covariates=names("past_covariates"),
            future_covariates=names("future_covariates"),
            calendar=names("calendar"),
            static_categorical=tuple(static_categorical),
            static_real=names("static_real"),
            min_history=size("min_history", 0),
        )
        columns = [
            *contract.past_covariates,
            *contract.future_covariates,
            *(s.name for s in contract.static_categorical),
            *contract.static_real,
        ]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise MetadataError(f"{f}: column {repeated[0]!r} has two roles")
        if contract.min_history > contract.lookback:
            raise MetadataError(f"{f}.min_history {contract.min_history} exceeds the lookback {contract.lookback}")
        return contract

    def median_index(self) -> int | None:
        """The position of the 0.5 level in ``quantiles``, if the model has it."""
        for i, q in enumerate(self.quantiles):
            if math.isclose(q, 0.5):
                return i
        return None


def panel_contract(meta: dict[str, Any]) -> PanelContract | None:
    """The contract of a decoded metadata dict, or None for a model that is not a panel model."""
    if meta.get("kind") != KIND:
        return None
    if META_KEY not in meta:
        raise MetadataError(f"rnnops.kind is {KIND!r} but the metadata has no rnnops.{META_KEY} entry")
    return PanelContract.from_json(meta[META_KEY])
