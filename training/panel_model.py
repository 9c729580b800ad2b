"""The global panel forecaster (issue 25, section 3): one encoder-decoder trained over every series
of a panel, read top to bottom.

1. **Scaling inside the model, per window.** ``standard`` (the default): each window is shifted
   by the mean and divided by the standard deviation of its observed lookback, and the forecast
   is mapped back with them (SegRNN's instance normalisation); ``mean_abs``: divided by the
   mean |y| (DeepAR's mean-absolute scaling, taken over the window), forced for ``negbin``, whose
   counts must stay counts. Per window rather than a fitted per-series scaler, so the exported
   model takes raw values and a new series needs no fitted scaler. Standardising won over
   mean-absolute scaling on M4 Hourly (60 s runs here: validation MASE 1.37 against 1.64, test
   OWA 0.650 against 0.683, MSIS 23 against 80): under mean-absolute scaling a smooth series of
   level 10,000 moves by a few hundredths of its scale, finer than the network's output noise,
   while MASE measures errors against exactly that movement. The level ``log(mean |y|)`` is fed
   in as a static input, so the model can still tell a series of 10 units from one of 10,000.
2. **Segments over the lookback** (SegRNN): the lookback of ``L`` steps is cut into ``L / w``
   segments of ``w`` steps; each segment's per-step features (scaled target, an "observed" flag,
   past covariates, known covariates and calendar features) are flattened and embedded by
   ``ReLU(Linear)``, and the recurrent cell steps once per *segment* (14 steps for 336 hours at
   w 24, not 336). On two shared cores the number of recurrent steps per window decides how many
   windows a time budget can train on (the issue's calibration: 22 optimizer steps in 3 minutes
   stepping hourly, OWA 1.71).
3. **Static inputs**: categorical columns through embeddings whose row 0 is the unknown bucket
   (categories first seen at prediction time, and any out-of-range code, map there; during
   training a small share of codes is replaced by 0 so that row is trained), numeric columns
   standardised by the training panel's mean and std (buffers), plus the window's log level. The static
   vector joins every encoder segment and every decoder step.
4. **Decoder**, direct multi-step (all steps at once, nothing fed back): a linear readout of the
   encoder's last state (and the static vector) gives every horizon step its outputs (the issue's
   calibration head), and a small MLP shared over the horizon adds each step's part from that
   step's known covariates (future covariates, calendar features), a context from the last state
   (MQ-RNN's local MLP, Wen et al. 2017) and the **seasonal lag**: the scaled value one season
   back (two for steps past the first season), taken from the lookback. With
   ``seasonal_residual`` (the default) the location output (the median, or the mean of normal
   and studentt) is *added to* that lag, and the output layers start at zero: an untrained
   model is the seasonal naive, and the network learns the change from it (M4 Hourly, 60 s runs
   here, validation MASE: 2.44 without the residual, 1.50 with it; with standardising, 1.37 with
   output layers initialised at random and 1.19 with them at zero; the seasonal naive's is 1.23).
5. **Probabilistic head** (:class:`Head`): ``pinball`` over ``quantiles`` (the default), or a
   distribution fitted by likelihood: ``studentt``, ``normal``, ``negbin`` (counts, DeepAR's
   parametrisation). The point forecast is the median.

The recurrent cell is chosen by name through :func:`make_cell` (GRU and LSTM from ``torch.nn``
today): the one place the cell registry of ``training/cells.py`` plugs in.

Inputs are raw values with NaN for a missing target; missing values are masked out of the loss
(:meth:`PanelForecaster.loss`) and enter the encoder as 0 with the "observed" flag 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnops.errors import RnnopsError

LIKELIHOODS = ("studentt", "normal", "negbin")
HEADS = ("pinball",) + LIKELIHOODS
# The 95 % interval (M4's MSIS), GluonTS' nine WQL quantiles and the median.
DEFAULT_QUANTILES = (0.025, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.975)
SCALE_EPS = 1e-3  # a window of zeros gets this scale, not a division by zero
UNKNOWN = 0  # the embedding row of categories not seen in training
SIMD_FLOATS = 16  # float32 lanes of the widest SIMD register onnxruntime's CPU kernels use (AVX-512)


def simd_last(fn, x: Tensor, n: int, fill: float = 1.0) -> Tensor:
    """``fn`` (element-wise) of ``x [..., n]``, computed with the last axis padded with ``fill``
    to a multiple of :data:`SIMD_FLOATS` values (then cut back to ``n``).

    Why: onnxruntime's CPU kernels (Eigen, MLAS) run whole SIMD packets from an aligned address
    and finish a tensor with scalar code, and a transcendental (log, sqrt, softplus) or a sum can
    differ in the last bit between the two. Over a [B, 1] or [B, 14, 5] tensor, which of a row's
    values took which path depended on B and on the row's place in the batch, so a series'
    forecast had other bits alone than inside a batch (~1e-7 relative). Rows of whole packets
    start aligned and take the same path at every place and every B. ``n`` is a Python int from
    the config, not read from ``x``: a size read from a tensor is a shape computation in the
    exported graph (dozens of nodes). ``fill`` must be in ``fn``'s domain (1.0 for log and sqrt)."""
    pad = -n % SIMD_FLOATS
    if not pad:
        return fn(x)
    return fn(F.pad(x, (0, pad), value=fill))[..., :n]


def row_sum(x: Tensor, n: int) -> Tensor:
    """``x [B, n]`` summed along its rows (``[B, 1]``), each row padded with zeros to whole SIMD
    packets so that it is summed the same way at every place in any batch (:func:`simd_last`)."""
    pad = -n % SIMD_FLOATS
    return (F.pad(x, (0, pad)) if pad else x).sum(1, keepdim=True)


def embedding_width(cardinality: int) -> int:
    """A categorical static column's embedding width: about half its vocabulary, at most 16."""
    return min(16, (cardinality + 2) // 2 + 1)


@dataclass(frozen=True)
class PanelModelConfig:
    """The whole contract of a panel model: sizes, inputs and head (saved with the run)."""

    lookback: int = 336
    horizon: int = 48
    segment_length: int = 24
    season: int = 24  # the seasonal period of the panel's frequency (lags); 1: no seasonal lag
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 2
    context_size: int = 16  # per-step context of the decoder
    decoder_hidden: int = 64
    dropout: float = 0.0
    head: str = "pinball"  # pinball | studentt | normal | negbin
    scaling: str = "standard"  # standard (window mean and std) | mean_abs (window mean |y|; negbin's)
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    # inputs (the panel's)
    n_past: int = 0  # past covariates (known up to now)
    n_known: int = 0  # future covariates + calendar features (known for the horizon too)
    static_cardinalities: tuple[
        int, ...
    ] = ()  # per categorical static column: vocabulary size (without the unknown bucket)
    static_real_mean: tuple[float, ...] = ()  # per numeric static column: the training panel's mean
    static_real_std: tuple[float, ...] = ()
    log_level_mean: float = 0.0  # of log(mean |y|) over the training panel's series
    log_level_std: float = 1.0
    # the covariates' mean and std over the training panel (past ones; future ones, then the
    # calendar features, which are already in [-0.5, 0.5] and pass unchanged)
    past_mean: tuple[float, ...] = ()
    past_std: tuple[float, ...] = ()
    future_mean: tuple[float, ...] = ()
    future_std: tuple[float, ...] = ()
    seasonal_residual: bool = True  # the location starts at the seasonal lag: the head learns the change from it
    unknown_dropout: float = 0.05  # share of static codes replaced by the unknown bucket while training
    samples: int = 200  # draws per window for the quantiles of a likelihood head
    # per categorical static column: its embedding's width; () = from the cardinality
    # (embedding_width). Set when a fine-tuned model's vocabulary grew (training/init_from.py): the
    # widths stay its parent's, so the parent's weights fit.
    static_embedding_dims: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
        object.__setattr__(self, "static_cardinalities", tuple(int(v) for v in self.static_cardinalities))
        object.__setattr__(self, "static_embedding_dims", tuple(int(v) for v in self.static_embedding_dims))
        if self.static_embedding_dims and len(self.static_embedding_dims) != len(self.static_cardinalities):
            raise ValueError("static_embedding_dims must have one entry per categorical static column")
        if self.head not in HEADS:
            raise RnnopsError(
                f"head {self.head!r} is not one of {', '.join(HEADS)} (pinball, or --likelihood "
                f"{'|'.join(LIKELIHOODS)})"
            )
        if self.scaling not in ("standard", "mean_abs"):
            raise RnnopsError(f"scaling {self.scaling!r} is not one of standard, mean_abs")
        if self.head == "negbin" and self.scaling != "mean_abs":
            object.__setattr__(self, "scaling", "mean_abs")  # counts are scaled, never shifted
        if self.segment_length < 1 or self.lookback % self.segment_length:
            raise RnnopsError(
                f"--segment-length {self.segment_length} does not divide --lookback {self.lookback}; "
                "segments must tile the lookback exactly (e.g. 24 for 336)"
            )
        qs = self.quantiles
        if not qs or any(not 0 < q < 1 for q in qs) or list(qs) != sorted(set(qs)) or 0.5 not in qs:
            raise RnnopsError(
                f"--quantiles {','.join(map(str, qs))}: give increasing levels in (0, 1) that "
                "include 0.5 (the point forecast is the median)"
            )
        for a, b in (("static_real_mean", "static_real_std"), ("past_mean", "past_std"), ("future_mean", "future_std")):
            if len(getattr(self, a)) != len(getattr(self, b)):
                raise ValueError(f"{a} and {b} must have one entry per column")
        if len(self.past_mean) not in (0, self.n_past) or len(self.future_mean) > self.n_known:
            raise ValueError("past_mean/future_mean must describe the past covariates and the first known inputs")

    @property
    def embedding_dims(self) -> tuple[int, ...]:
        """Each categorical static column's embedding width."""
        return self.static_embedding_dims or tuple(embedding_width(n) for n in self.static_cardinalities)

    @property
    def segments(self) -> int:
        return self.lookback // self.segment_length

    @property
    def seasonal_lags(self) -> bool:
        """Whether the decoder gets the seasonal lag: a season > 1 whose lag for the whole horizon
        (ceil(H / m) seasons back) lies inside the lookback."""
        return self.season > 1 and math.ceil(self.horizon / self.season) * self.season <= self.lookback


def _std(values) -> Tensor:
    """Standard deviations as a buffer, a constant column's 0 replaced by 1."""
    return torch.tensor([v if v > 1e-6 else 1.0 for v in values], dtype=torch.float32)


def make_cell(name: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """The encoder's recurrent cell by name, ``batch_first``. The seam for the cell registry
    (``training/cells.py``): a registry entry's builder replaces this table."""
    cells = {"gru": nn.GRU, "lstm": nn.LSTM}
    if name not in cells:
        raise RnnopsError(f"--cell {name!r} is not available for panel models yet; use one of {', '.join(cells)}")
    return cells[name](
        input_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
    )


class Head(nn.Module):
    """Turns the decoder's per-step outputs into forecasts in raw units, and scores them.

    ``pinball``: one output per quantile level, made monotone by construction (the median plus
    cumulative softplus steps up and down), trained by the mean pinball loss of all levels in
    scaled units (the median's term is half the MAE that the calibration run used).
    Likelihoods, trained by the negative log-likelihood: ``normal`` and ``studentt`` (location,
    scale, degrees of freedom > 2) in scaled units; ``negbin`` in raw counts with DeepAR's
    parametrisation (mean = scale * softplus, shape alpha = softplus / sqrt(scale))."""

    N_PARAMS = {"normal": 2, "studentt": 3, "negbin": 2}

    def __init__(self, config: PanelModelConfig):
        super().__init__()
        self.kind = config.head
        self.levels = config.quantiles
        self.median_index = self.levels.index(0.5)
        self.samples = config.samples
        self.register_buffer("q", torch.tensor(self.levels, dtype=torch.float32))

    @property
    def location_index(self) -> int | None:
        """The output that is the forecast's location in scaled units (the median's, the mean's), which
        the seasonal residual is added to; None for negbin (its mean is a softplus in raw counts)."""
        return {"pinball": self.median_index, "normal": 0, "studentt": 0}.get(self.kind)

    @property
    def n_outputs(self) -> int:
        return len(self.levels) if self.kind == "pinball" else self.N_PARAMS[self.kind]

    # ---- pinball

    def _monotone(self, raw: Tensor) -> Tensor:
        """[..., Q] unconstrained -> ordered quantiles (scaled units)."""
        k = self.median_index
        mid = raw[..., k : k + 1]
        n_up = len(self.levels) - k - 1  # ints from the config: see simd_last
        up = mid + torch.cumsum(simd_last(F.softplus, raw[..., k + 1 :], n_up), dim=-1)
        down = mid - torch.cumsum(simd_last(F.softplus, raw[..., :k], k).flip(-1), dim=-1).flip(-1)
        return torch.cat([down, mid, up], dim=-1)

    # ---- likelihoods

    def distribution(self, raw: Tensor, scale: Tensor):
        """The predictive distribution of each step; scaled units for normal/studentt, raw for negbin.
        ``scale`` [B, 1, 1]."""
        if self.kind == "normal":
            return torch.distributions.Normal(raw[..., 0], F.softplus(raw[..., 1]) + 1e-4)
        if self.kind == "studentt":
            return torch.distributions.StudentT(
                2.0 + F.softplus(raw[..., 2]), raw[..., 0], F.softplus(raw[..., 1]) + 1e-4
            )
        if self.kind == "negbin":
            s = scale[..., 0]
            mean = s * F.softplus(raw[..., 0]) + 1e-6
            alpha = F.softplus(raw[..., 1]) / torch.sqrt(s) + 1e-6  # variance = mean + alpha * mean^2
            total = 1.0 / alpha
            return torch.distributions.NegativeBinomial(total_count=total, logits=torch.log(mean * alpha))
        raise ValueError(f"head {self.kind!r} has no distribution")

    # ---- the two things a head does

    def loss(self, raw: Tensor, loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
        """Mean loss over the observed target values (``y`` raw [B, H], NaN = missing, masked out);
        ``loc``, ``scale`` [B, 1, 1]: the window's scaling (scaled = (raw - loc) / scale)."""
        observed = torch.isfinite(y)
        if not observed.any():
            return raw.sum() * 0.0
        y0 = torch.where(observed, y, torch.zeros_like(y))
        if self.kind == "pinball":
            pred = self._monotone(raw)  # scaled
            diff = ((y0 - loc[..., 0]) / scale[..., 0]).unsqueeze(-1) - pred
            per = torch.maximum(self.q * diff, (self.q - 1) * diff).mean(-1)
        elif self.kind == "negbin":
            per = -self.distribution(raw, scale).log_prob(y0.clamp(min=0).round())
        else:
            per = -self.distribution(raw, scale).log_prob((y0 - loc[..., 0]) / scale[..., 0])
        return per[observed].mean()

    def quantiles(self, raw: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """Forecast quantiles at ``levels`` in raw units, [B, H, Q], ordered along the last axis."""
        if self.kind == "pinball":
            return self._monotone(raw) * scale + loc
        dist = self.distribution(raw, scale)
        if self.kind == "normal":
            return (dist.loc.unsqueeze(-1) + dist.scale.unsqueeze(-1) * torch.special.ndtri(self.q)) * scale + loc
        draws = dist.sample((self.samples,))  # [S, B, H]
        # counts keep integer quantiles (the empirical inverse CDF); sorted by construction either way
        how = "lower" if self.kind == "negbin" else "linear"
        qs = torch.quantile(draws.float(), self.q, dim=0, interpolation=how).permute(1, 2, 0)  # [B, H, Q]
        return qs if self.kind == "negbin" else qs * scale + loc


@dataclass
class PanelBatch:
    """Windows of a panel as tensors. ``past_target`` raw with NaN for missing values (also for
    steps before a series' start); ``future_target`` likewise (training and scoring only)."""

    past_target: Tensor  # [B, L]
    past_covariates: Tensor  # [B, L, n_past] (NaN -> 0 before the model)
    known_past: Tensor  # [B, L, n_known]: future covariates + calendar over the lookback
    known_future: Tensor  # [B, H, n_known]: the same over the horizon
    static_cat: Tensor  # [B, n_cat] int64 codes (0 = unknown)
    static_real: Tensor  # [B, n_real]
    future_target: Tensor | None = None  # [B, H]


class PanelForecaster(nn.Module):
    """``forward(batch) -> (raw head outputs [B, H, n_outputs], loc, scale [B, 1, 1])``;
    :meth:`loss` and :meth:`quantiles` read those through the :class:`Head`."""

    def __init__(self, config: PanelModelConfig):
        super().__init__()
        c = self.config = config
        d, w = c.hidden_size, c.segment_length
        self.embeddings = nn.ModuleList(
            nn.Embedding(n + 1, dim) for n, dim in zip(c.static_cardinalities, c.embedding_dims)
        )
        self.register_buffer("real_mean", torch.tensor(c.static_real_mean, dtype=torch.float32))
        self.register_buffer("real_std", _std(c.static_real_std))
        # covariates standardised inside the model, so the exported file takes them raw
        self.register_buffer("past_mean", torch.tensor(c.past_mean or [0.0] * c.n_past, dtype=torch.float32))
        self.register_buffer("past_std", _std(c.past_std or [1.0] * c.n_past))
        calendar = c.n_known - len(c.future_mean)
        self.register_buffer("known_mean", torch.tensor(list(c.future_mean) + [0.0] * calendar, dtype=torch.float32))
        self.register_buffer("known_std", _std(list(c.future_std) + [1.0] * calendar))
        n_static = sum(e.embedding_dim for e in self.embeddings) + len(c.static_real_mean) + 1  # + log level
        self.n_static = n_static
        per_step = 2 + c.n_past + c.n_known  # scaled target, observed flag, covariates
        self.embed = nn.Sequential(nn.Linear(w * per_step + n_static, d), nn.ReLU())
        self.cell = make_cell(c.cell, d, d, c.num_layers, c.dropout)
        self.drop = nn.Dropout(c.dropout)
        h, k = c.horizon, c.context_size
        self.global_mlp = nn.Linear(d + n_static, (h + 1) * k)
        local_in = 2 * k + c.n_known + (1 if c.seasonal_lags else 0)
        self.head = Head(c)
        # the direct multi-step readout (the calibration run's head): each step's outputs from the last state
        self.direct = nn.Linear(d + n_static, h * self.head.n_outputs)
        self.local_mlp = nn.Sequential(
            nn.Linear(local_in, c.decoder_hidden), nn.ReLU(), nn.Linear(c.decoder_hidden, self.head.n_outputs)
        )
        if c.seasonal_lags:
            m, L = c.season, c.lookback
            # step j of the horizon reads the lookback position one (or more) whole seasons back
            lag_index = [L + j - m * (j // m + 1) for j in range(h)]
            self.register_buffer("lag_index", torch.tensor(lag_index, dtype=torch.long))
        # The output layers start at zero: an untrained model forecasts the seasonal lag (with the
        # seasonal residual) or the window's location, not noise of the size of the series' spread.
        for layer in (self.direct, self.local_mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---------------------------------------------------------------- pieces

    def window_scaling(self, past_target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loc, scale, level)`` of each window's observed lookback, each [B, 1, 1]: ``level`` is
        the mean |y|; ``standard`` scaling is (mean, std), ``mean_abs`` is (0, level). The std is
        floored at a thousandth of the level, so a flat window does not blow up."""
        observed = torch.isfinite(past_target)
        y = torch.where(observed, past_target, torch.zeros_like(past_target))
        count = observed.sum(1, keepdim=True).clamp(min=1)
        # sums, sqrt and log on whole SIMD packets (simd_last): the same bits alone or in any batch
        L = self.config.lookback
        level = (row_sum(y.abs(), L) / count).clamp(min=SCALE_EPS)
        if self.config.scaling == "mean_abs":
            return torch.zeros_like(level).unsqueeze(-1), level.unsqueeze(-1), level.unsqueeze(-1)
        mean = row_sum(y, L) / count
        var = row_sum(torch.where(observed, y - mean, torch.zeros_like(y)) ** 2, L) / count
        std = torch.maximum(simd_last(torch.sqrt, var, 1), 1e-3 * level)
        return mean.unsqueeze(-1), std.unsqueeze(-1), level.unsqueeze(-1)

    def static_vector(self, static_cat: Tensor, static_real: Tensor, level: Tensor) -> Tensor:
        """[B, n_static]: embeddings (unknown and out-of-range codes -> row 0), standardised
        numbers, standardised log(level)."""
        c = self.config
        parts = []
        for k, emb in enumerate(self.embeddings):
            codes = static_cat[:, k]
            codes = torch.where((codes >= 0) & (codes < emb.num_embeddings), codes, torch.full_like(codes, UNKNOWN))
            if self.training and c.unknown_dropout > 0:
                drop = torch.rand(codes.shape, device=codes.device) < c.unknown_dropout
                codes = torch.where(drop, torch.full_like(codes, UNKNOWN), codes)
            parts.append(emb(codes))
        if len(self.real_mean):
            parts.append(torch.nan_to_num((static_real - self.real_mean) / self.real_std))
        parts.append((simd_last(torch.log, level[:, 0], 1) - c.log_level_mean) / c.log_level_std)
        return torch.cat(parts, dim=-1)

    def forward(self, batch: PanelBatch) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config
        b, w = batch.past_target.shape[0], c.segment_length
        loc, scale, level = self.window_scaling(batch.past_target)
        observed = torch.isfinite(batch.past_target)
        z = torch.where(
            observed, (batch.past_target - loc[..., 0]) / scale[..., 0], torch.zeros_like(batch.past_target)
        )
        static = self.static_vector(batch.static_cat, batch.static_real, level)
        past = torch.nan_to_num((batch.past_covariates - self.past_mean) / self.past_std)  # missing -> the mean
        known_past = (batch.known_past - self.known_mean) / self.known_std
        known_future = (batch.known_future - self.known_mean) / self.known_std
        steps = torch.cat(
            [z.unsqueeze(-1), observed.float().unsqueeze(-1), past, known_past], dim=-1
        )  # [B, L, per_step]
        segments = steps.reshape(b, c.segments, w * steps.shape[-1])
        segments = torch.cat([segments, static.unsqueeze(1).expand(b, c.segments, -1)], dim=-1)
        out, _ = self.cell(self.embed(segments))
        last = self.drop(out[:, -1])
        ctx = torch.relu(self.global_mlp(torch.cat([last, static], dim=-1))).reshape(b, c.horizon + 1, c.context_size)
        local = [ctx[:, :-1], ctx[:, -1:].expand(b, c.horizon, -1), known_future]
        direct = self.direct(torch.cat([last, static], dim=-1)).reshape(b, c.horizon, self.head.n_outputs)
        if not c.seasonal_lags:
            return direct + self.local_mlp(torch.cat(local, dim=-1)), loc, scale
        lag = z[:, self.lag_index].unsqueeze(-1)  # [B, H, 1] scaled
        raw = direct + self.local_mlp(torch.cat(local + [lag], dim=-1))
        i = self.head.location_index
        if c.seasonal_residual and i is not None:
            raw = torch.cat([raw[..., :i], raw[..., i : i + 1] + lag, raw[..., i + 1 :]], dim=-1)
        return raw, loc, scale

    # ---------------------------------------------------------------- what training and forecasting use

    def loss(self, batch: PanelBatch) -> Tensor:
        raw, loc, scale = self(batch)
        return self.head.loss(raw, loc, scale, batch.future_target)

    @torch.no_grad()
    def quantiles(self, batch: PanelBatch) -> Tensor:
        """[B, H, Q] raw-unit quantiles at ``config.quantiles``."""
        raw, loc, scale = self(batch)
        return self.head.quantiles(raw, loc, scale)
