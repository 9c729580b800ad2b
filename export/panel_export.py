"""A global panel forecaster as the ONNX file of ``rnnops.panel`` (issue 25, §3).

The graph is the one :mod:`rnnops.panel_contract` describes: one input per role the model has
(``past_target`` always; ``past_covariates``, ``known_past`` + ``known_future``, ``static_cat``,
``static_real`` when the panel has such columns), a dynamic ``batch`` axis, and two outputs,
``forecast`` ``[B, H]`` (the median) and ``quantiles`` ``[B, H, Q]``, raw units. A role the model
has no columns for has no graph input: :class:`PanelGraph` builds its zero-width tensor inside,
so the network is the trained :class:`~rnnops.training.panel_model.PanelForecaster`, unchanged.

**Deterministic quantiles.** Training scores the likelihood heads' quantiles from 200 random
draws per window (``Head.quantiles``); a served model must answer the same request with the same
numbers, so the graph computes each head's quantile function instead:

- ``pinball``: the head's own ordered quantiles (already deterministic);
- ``normal``: ``mu + sigma * ndtri(q)``, exact (the levels' ``ndtri`` baked as constants);
- ``studentt``: the Student-t quantile ``t_q(df)`` is tabulated at export (``scipy.special.stdtrit``,
  float64) on :data:`STUDENTT_GRID` points of ``u = 1 / df`` over ``[0, 0.5]`` (``df`` > 2, and
  ``u = 0`` is the normal), and the graph interpolates linearly in ``u``: ``t_q`` is smooth in
  ``u``: the table's largest error in ``t_q`` is 6e-7 at the default levels and 4e-6 at 0.005 /
  0.995 (:func:`studentt_error`; ``tests/test_panel_export.py`` holds it under 1e-4);
- ``negbin``: the exact integer quantile (the smallest ``k`` with ``CDF(k) >= q``) from the pmf
  summed over ``k < NEGBIN_SUPPORT`` (its log by the ratio recursion, CumSum in the graph: no
  lgamma op is needed); a level whose quantile lies past that support (a mean in the hundreds)
  takes the gamma of the same mean and variance by Wilson-Hilferty's approximation instead.

The levels are made non-decreasing along ``Q`` by a running maximum (only negbin, where the
exact sum and the approximation meet, could break the order). How far these are from the eager
sampler is measured and stated in docs/export.md ("Panel forecasters").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import rnnops
from rnnops import contract
from rnnops import panel_contract as P
from rnnops.errors import RnnopsError
from rnnops.panel_contract import PanelContract, StaticCategorical
from rnnops.training.panel_model import PanelBatch, PanelForecaster, simd_last

STUDENTT_GRID = 1025  # points of u = 1/df over [0, 0.5]
STUDENTT_U_MAX = 0.5  # df > 2 (Head: 2 + softplus)
NEGBIN_SUPPORT = 1024  # counts summed exactly: 0..NEGBIN_SUPPORT-1
# The fewest observed target values a series needs. With none, the window's scaling has nothing
# to read (level and spread floor at SCALE_EPS) and the forecast is ~0 whatever the statics say:
# training never draws such a window (each has at least one observed value before its cutoff).
MIN_HISTORY = 1


# ----------------------------------------------------------------------------- the contract


def panel_contract_of(model: PanelForecaster, spec: dict) -> PanelContract:
    """The ``rnnops.panel`` entry of a logged panel model: its config + the run's ``inputs``
    (:func:`rnnops.training.panel_task.model_inputs`), checked against the network's sizes."""
    c = model.config
    inputs = spec.get("inputs") or {}
    freq = spec.get("freq")
    if not inputs or not freq:
        raise RnnopsError("the panel model's config.json has no inputs/freq: it was not logged by a panel run")
    targets = list(inputs.get("targets") or [])
    if len(targets) != 1:
        raise RnnopsError(f"a panel model forecasts one target; its config names {targets}")
    static = inputs.get("static") or []
    cats = tuple(
        StaticCategorical(s["name"], tuple(str(v) for v in s["vocabulary"]))
        for s in static
        if s["kind"] == "categorical"
    )
    contract_ = PanelContract(
        target=targets[0],
        freq=str(freq),
        season=int(inputs.get("season") or c.season),
        lookback=int(c.lookback),
        horizon=int(c.horizon),
        quantiles=tuple(float(q) for q in c.quantiles),
        past_covariates=tuple(inputs.get("past_covariates") or ()),
        future_covariates=tuple(inputs.get("future_covariates") or ()),
        calendar=tuple(inputs.get("calendar") or ()),
        static_categorical=cats,
        static_real=tuple(s["name"] for s in static if s["kind"] == "real"),
        min_history=MIN_HISTORY,
    )
    sizes = {
        "past covariates": (len(contract_.past_covariates), c.n_past),
        "known inputs": (len(contract_.known_names), c.n_known),
        "categorical statics": (len(cats), len(c.static_cardinalities)),
        "numeric statics": (len(contract_.static_real), len(c.static_real_mean)),
    }
    for what, (named, built) in sizes.items():
        if named != built:
            raise RnnopsError(f"the panel model's config.json names {named} {what} but its network takes {built}")
    for s, n in zip(cats, c.static_cardinalities):
        if len(s.vocabulary) != n:
            raise RnnopsError(f"static column {s.name!r}: vocabulary of {len(s.vocabulary)}, embedding of {n}")
    P.PanelContract.from_json(contract_.to_json())  # the bounds serving will check, before any file exists
    return contract_


def metadata_for(model: PanelForecaster, spec: dict, source_run: str | None) -> dict:
    """The ``rnnops.*`` metadata of a panel model's file: every key of ``contract.META_KEYS``
    (null where it describes another kind), ``kind`` "panel" and the ``panel`` entry."""
    c = model.config
    panel = panel_contract_of(model, spec)
    meta = {
        "kind": P.KIND,
        "cell": c.cell,
        "layers": int(c.num_layers),
        "hidden_size": int(c.hidden_size),
        "state_inputs": [],
        "state_outputs": [],
        "state": [],  # stateless: each window is scaled by itself (rnnops.stateful=false)
        "stateful": False,
        "vocab": None,
        "feature_names": None,
        "target_names": [panel.target],
        "lookback": panel.lookback,
        "horizon": panel.horizon,
        "freq": panel.freq,
        "arch": None,
        "quantiles": None,  # a panel model's levels are in rnnops.panel (its "quantiles" output is always there)
        "precision": "fp32",
        "source_run": source_run,
        "version": rnnops.__version__,
        P.META_KEY: panel.to_json(),
    }
    assert set(meta) == set(contract.META_KEYS), "metadata must follow rnnops.contract.META_KEYS"
    return meta


# ----------------------------------------------------------------------------- the graph


class PanelGraph(nn.Module):
    """``forward(*inputs in contract order) -> (forecast [B, H], quantiles [B, H, Q])``: the trained
    network plus the head's deterministic quantile function (see the module doc)."""

    def __init__(self, model: PanelForecaster, panel: PanelContract):
        super().__init__()
        self.model = model.eval()
        self.panel = panel
        self.names = tuple(panel.inputs)
        c = model.config
        self.kind = c.head
        self.median = c.quantiles.index(0.5)
        levels = np.asarray(c.quantiles, np.float64)
        if self.kind in ("normal", "negbin"):
            from scipy.special import ndtri

            self.register_buffer("z", torch.tensor(ndtri(levels), dtype=torch.float32))
        if self.kind == "studentt":
            self.register_buffer("t_table", torch.tensor(studentt_table(levels), dtype=torch.float32))
        if self.kind == "negbin":
            self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
            k = torch.arange(NEGBIN_SUPPORT - 1, dtype=torch.float32)
            self.register_buffer("k", k)

    def batch(self, *inputs: Tensor) -> PanelBatch:
        """The contract's inputs as the :class:`PanelBatch` training builds (absent roles: zero-width)."""
        feeds = dict(zip(self.names, inputs))
        c = self.model.config
        target = feeds[P.PAST_TARGET]
        b, L, H = target.shape[0], c.lookback, c.horizon

        def empty(*shape, dtype=torch.float32):
            return torch.zeros((b, *shape), dtype=dtype)

        return PanelBatch(
            past_target=target,
            past_covariates=feeds.get(P.PAST_COVARIATES, empty(L, 0)),
            known_past=feeds.get(P.KNOWN_PAST, empty(L, 0)),
            known_future=feeds.get(P.KNOWN_FUTURE, empty(H, 0)),
            static_cat=feeds.get(P.STATIC_CAT, empty(0, dtype=torch.int64)),
            static_real=feeds.get(P.STATIC_REAL, empty(0)),
        )

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        raw, loc, scale = self.model(self.batch(*inputs))
        q = self.quantiles(raw, loc, scale)
        return q[..., self.median], q

    def quantiles(self, raw: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """[B, H, Q] raw-unit quantiles, deterministic. The likelihoods' parameters follow
        ``Head.distribution`` exactly (same softplus floors)."""
        if self.kind == "pinball":
            return self.model.head.quantiles(raw, loc, scale)
        # simd_last: the same bits for a series alone or in any batch (see there)
        if self.kind == "normal":
            mu, sigma = raw[..., 0:1], simd_last(F.softplus, raw[..., 1:2], 1) + 1e-4
            return (mu + sigma * self.z) * scale + loc
        if self.kind == "studentt":
            mu, sigma = raw[..., 0:1], simd_last(F.softplus, raw[..., 1:2], 1) + 1e-4
            df = 2.0 + simd_last(F.softplus, raw[..., 2:3], 1)[..., 0]
            return (mu + sigma * self.studentt_quantile(df)) * scale + loc
        return self.negbin_quantile(raw, scale)

    def studentt_quantile(self, df: Tensor) -> Tensor:
        """``t_q(df)`` [B, H, Q] at every level, interpolated linearly in ``u = 1/df`` on the table."""
        g = STUDENTT_GRID - 1
        pos = torch.clamp(1.0 / df, 0.0, STUDENTT_U_MAX) * (g / STUDENTT_U_MAX)
        i0 = torch.clamp(torch.floor(pos), 0.0, g - 1.0)
        frac = (pos - i0).unsqueeze(-1)
        i0 = i0.long()
        lo, hi = self.t_table[i0], self.t_table[i0 + 1]  # [B, H, Q]
        return lo + frac * (hi - lo)

    def negbin_quantile(self, raw: Tensor, scale: Tensor) -> Tensor:
        """Integer quantiles of the negative binomial (DeepAR's parametrisation, as ``Head``). The
        pmf is summed in float64: in float32 the log-pmf recursion drifts by ~1e-4 over a
        thousand terms, enough to move a quantile by counts."""
        s = scale[..., 0]
        mean = (s * F.softplus(raw[..., 0]) + 1e-6).double()
        alpha = (F.softplus(raw[..., 1]) / torch.sqrt(s) + 1e-6).double()
        r, ma = 1.0 / alpha, mean * alpha
        # log pmf(k) = r log(1 - p) + sum_{j<k} [log(j + r) - log(j + 1) + log p], p = ma / (1 + ma)
        r_ = r.unsqueeze(-1)
        log_p = (torch.log(ma) - torch.log1p(ma)).unsqueeze(-1)
        k = self.k.double()
        steps = torch.log(k + r_) - torch.log(k + 1.0) + log_p  # [B, H, K-1]
        log0 = -r_ * torch.log1p(ma).unsqueeze(-1)
        log_pmf = torch.cat([log0, log0 + torch.cumsum(steps, dim=-1)], dim=-1)  # [B, H, K]
        cdf = torch.cumsum(torch.exp(log_pmf), dim=-1)
        # A level past the support: the gamma of the same mean and variance (the negative
        # binomial's large-count limit), by Wilson-Hilferty, with a continuity correction.
        shape = mean / (1.0 + ma)  # mean^2 / variance
        out = []
        for j in range(len(self.model.config.quantiles)):
            q = self.levels[j].double()
            exact = (cdf < q).sum(-1).double()  # the smallest k with CDF(k) >= q
            z = self.z[j].double()
            cube = torch.clamp(1.0 - 1.0 / (9.0 * shape) + z / (3.0 * torch.sqrt(shape)), min=0.0)
            approx = torch.clamp(torch.ceil(mean * cube**3 - 0.5), min=0.0)
            out.append(torch.where(cdf[..., -1] >= q, exact, approx))
        for j in range(1, len(out)):  # non-decreasing along Q where the two methods meet
            out[j] = torch.maximum(out[j], out[j - 1])
        return torch.stack(out, dim=-1).float()


def studentt_table(levels: np.ndarray) -> np.ndarray:
    """``[STUDENTT_GRID, Q]``: the Student-t quantiles at ``levels`` for ``u = 1/df`` on the grid
    (row 0, u = 0: the normal's)."""
    from scipy.special import ndtri, stdtrit

    u = np.linspace(0.0, STUDENTT_U_MAX, STUDENTT_GRID)
    table = np.empty((len(u), len(levels)))
    table[0] = ndtri(levels)
    table[1:] = stdtrit(1.0 / u[1:, None], levels[None, :])
    return table


# ----------------------------------------------------------------------------- inputs


def make_inputs(
    panel: PanelContract,
    batch: int,
    rng: np.random.Generator,
    *,
    counts: bool = False,
    history: int | None = None,
) -> dict[str, np.ndarray]:
    """Random feeds of the contract's inputs, built as training builds windows: each row a series
    of its own level (1 to 1,000, ``counts``: non-negative integers) whose history starts somewhere
    in the lookback (NaN target, NaN past covariates and 0 known inputs before it; half the rows a
    full lookback, the others at least ``min_history`` steps; ``history``: every row exactly that
    many), a few missing values inside it (never the first or last observed step), random
    covariates, and static codes over the whole vocabulary, the unknown bucket (0) and one past it."""
    L, H = panel.lookback, panel.horizon
    level = 10.0 ** rng.uniform(0, 3, (batch, 1))
    values = level * (1.0 + 0.3 * rng.standard_normal((batch, L)))
    if counts:
        values = np.round(np.abs(values))
    if history is None:
        lengths = rng.integers(max(panel.min_history, 1), L + 1, batch)
        lengths[: (batch + 1) // 2] = L
    else:
        lengths = np.full(batch, int(history))
    first = (L - lengths)[:, None]  # [B, 1]: the position of each series' first value
    before = np.arange(L)[None, :] < first
    gaps = (rng.random((batch, L)) < 0.05) & (np.arange(L)[None, :] > first) & (np.arange(L)[None, :] < L - 1)
    values[before | gaps] = np.nan
    feeds: dict[str, np.ndarray] = {P.PAST_TARGET: values.astype(np.float32)}
    if panel.past_covariates:
        past = rng.standard_normal((batch, L, len(panel.past_covariates))) * 5 + 2
        past[before] = np.nan
        past[rng.random(past.shape) < 0.05] = np.nan
        feeds[P.PAST_COVARIATES] = past.astype(np.float32)
    if panel.known_names:
        k = len(panel.known_names)
        known_past = rng.standard_normal((batch, L, k))
        known_past[before] = 0.0
        feeds[P.KNOWN_PAST] = known_past.astype(np.float32)
        feeds[P.KNOWN_FUTURE] = rng.standard_normal((batch, H, k)).astype(np.float32)
    if panel.static_categorical:
        cols = [rng.integers(0, len(s.vocabulary) + 2, batch) for s in panel.static_categorical]  # 0 and one past
        feeds[P.STATIC_CAT] = np.stack(cols, 1).astype(np.int64)
    if panel.static_real:
        feeds[P.STATIC_REAL] = (rng.standard_normal((batch, len(panel.static_real))) * 10).astype(np.float32)
    return feeds


def eager(graph: PanelGraph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph's outputs in eager PyTorch (the parity gate's reference), in contract order."""
    with torch.no_grad():
        outs = graph(*(torch.from_numpy(feeds[n]) for n in graph.names))
    return [o.numpy() for o in outs]


# ----------------------------------------------------------------------------- the file


def export_panel_onnx(
    model: PanelForecaster,
    spec: dict,
    path: str | Path,
    *,
    opset: int = 18,
    source_run: str | None = None,
) -> Path:
    """Write ``model`` as the ``rnnops.panel`` ONNX file (legacy exporter, dynamic batch, metadata
    inside, one self-contained file checked by ``onnx.checker``); returns the path."""
    import onnx

    from rnnops.export.onnx_export import _quiet, set_metadata

    meta = metadata_for(model, spec, source_run)
    panel = P.PanelContract.from_json(meta[P.META_KEY])
    graph = PanelGraph(model, panel).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = make_inputs(panel, 2, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[n]) for n in graph.names)
    outputs = [P.FORECAST, P.QUANTILES]
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                graph,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(graph.names),
                output_names=outputs,
                dynamic_axes={n: {0: P.BATCH} for n in (*graph.names, *outputs)},
                do_constant_folding=True,
            )
    except Exception as exc:  # exporters raise many types; the first line says what went wrong
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RnnopsError(
            f"the ONNX exporter failed at opset {opset} for a panel {model.config.cell} model: {first[:300]}"
        ) from exc
    proto = onnx.load(str(path))
    want = {**panel.inputs, **panel.outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in want[value.name][0]:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)
    set_metadata(proto, meta)
    proto.doc_string = (
        f"rnnops {rnnops.__version__} panel model ({model.config.cell}, {model.config.head} head), "
        "exported with the legacy exporter"
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def studentt_error(levels=(0.025, 0.1, 0.5, 0.9, 0.975), points: int = 4001) -> float:
    """The table's largest interpolation error in ``t_q`` over ``df`` in (2, inf) (a denser grid
    against scipy), for the docs' figure."""
    from scipy.special import stdtrit

    graph_levels = np.asarray(levels, np.float64)
    table = studentt_table(graph_levels)
    u = np.linspace(1e-6, STUDENTT_U_MAX - 1e-9, points)
    pos = u * (STUDENTT_GRID - 1) / STUDENTT_U_MAX
    i0 = np.clip(np.floor(pos).astype(int), 0, STUDENTT_GRID - 2)
    approx = table[i0] + (pos - i0)[:, None] * (table[i0 + 1] - table[i0])
    exact = stdtrit(1.0 / u[:, None], graph_levels[None, :])
    return float(np.max(np.abs(approx - exact)))


__all__ = [
    "MIN_HISTORY",
    "PanelGraph",
    "eager",
    "export_panel_onnx",
    "make_inputs",
    "metadata_for",
    "panel_contract_of",
    "studentt_error",
    "studentt_table",
]
