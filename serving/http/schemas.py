"""Request bodies (pydantic): what each endpoint takes, with the ranges that don't depend on the model.

Checks that need the model or the server's limits (vocabulary, feature count, lookback,
``RNNOPS_MAX_*``) happen in the handlers, with messages that name the variable to change.
Unknown fields are refused (a typo like ``max_tokens`` should not pass silently) and so are
NaN and infinities.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Row = list[float]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]  # a covariate or static column
MAX_COLUMNS = 256  # covariates or static columns in one series entry (a model's contract has fewer)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=False)


class GenerateBody(_Body):
    """POST /generate (SSE) and POST /complete."""

    model: str | None = Field(None, description="Served model name (GET /models); default: the first char model.")
    prompt: str = Field(
        ..., min_length=1, description="Text to continue; every character must be in the model's vocabulary."
    )
    max_chars: int = Field(200, ge=1, description="Characters to generate (at most RNNOPS_MAX_CHARS).")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="0 = greedy.")
    top_k: int = Field(0, ge=0, le=100_000, description="Sample among the k most likely characters (0 = all).")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling: the smallest set with this probability mass."
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Same seed, same text (default: random, returned in the stats)."
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=8,
        description="Stop when one of these strings is generated (it is not returned).",
    )


class SeriesItem(_Body):
    """One series of a panel model's request (`/forecast` with `series`); the model's contract
    (GET /models: `panel`) says which covariates and static columns it reads."""

    id: str = Field(..., min_length=1, max_length=200, description="The series' id (unique in the request).")
    timestamps: list[str] = Field(
        default_factory=list, description="ISO timestamps of the context steps, at the model's frequency."
    )
    context: list[float] | list[Row] = Field(
        default_factory=list,
        description="Target values, oldest first (or rows of one value); the model reads the last `lookback`.",
    )
    past_covariates: dict[Name, list[float | None]] = Field(
        default_factory=dict,
        max_length=MAX_COLUMNS,
        description="Covariates known up to now: one value per context step (null where unknown).",
    )
    future_covariates: dict[Name, list[float]] = Field(
        default_factory=dict,
        max_length=MAX_COLUMNS,
        description="Covariates known ahead: one value per context step, then one per forecast step (T + H).",
    )
    static: dict[Name, Annotated[str, StringConstraints(max_length=200)] | float] = Field(
        default_factory=dict,
        max_length=MAX_COLUMNS,
        description="Static attributes: a category (string) or a number per column; an unknown category "
        "is forecast with the model's unknown category and a warning.",
    )
    start: str | None = Field(
        None,
        max_length=64,
        description="The first forecast timestamp of a series with no history (cold start, when the model allows it).",
    )


class ForecastBody(_Body):
    """POST /forecast: one context window or several."""

    model: str | None = Field(None, description="Served forecaster name; default: the first forecaster.")
    context: list[Row] | None = Field(None, description="One window: T rows of F raw feature values, oldest first.")
    contexts: list[list[Row]] | None = Field(None, description="Several windows (each T_i x F).")
    timestamps: list[str] | list[list[str]] | None = Field(
        None, description="ISO timestamps of the context rows (per window for `contexts`); the forecast gets its own."
    )
    freq: str | None = Field(
        None,
        max_length=32,
        description="pandas frequency of the timestamps (h, D, B, W-SUN, MS...); default: "
        "told from the timestamps, as batch jobs do (needed when they are irregular).",
    )
    series: list[SeriesItem] | None = Field(
        None, description="A panel model's series, each with its covariates and statics (instead of `context`)."
    )


class OpenSessionBody(_Body):
    """POST /sessions. A panel model's session is named by the series' `id` and takes the fields
    of a `/forecast` series entry (`static`, `past_covariates`, `future_covariates` for the
    context and the H steps ahead, `start`)."""

    model: str | None = None
    context: list[Row] | list[float] | None = Field(
        None, description="Observations so far (optional; a panel session: the target's values)."
    )
    timestamps: list[str] | None = None
    freq: str | None = Field(None, max_length=32, description="pandas frequency of the timestamps (see /forecast).")
    id: str | None = Field(
        None, min_length=1, max_length=200, description="A panel model's series id: the session's id."
    )
    static: dict[Name, Annotated[str, StringConstraints(max_length=200)] | float] | None = Field(
        None, max_length=MAX_COLUMNS, description="A panel session's static attributes (as in a series entry)."
    )
    past_covariates: dict[Name, list[float | None]] | None = Field(
        None, max_length=MAX_COLUMNS, description="A panel session's past covariates (one value per context step)."
    )
    future_covariates: dict[Name, list[float]] | None = Field(
        None,
        max_length=MAX_COLUMNS,
        description="A panel session's future covariates: one value per context step, then the H steps ahead.",
    )
    start: str | None = Field(None, max_length=64, description="A panel session without history: its first step.")


class ObserveBody(_Body):
    """POST /sessions/{id}: new observations, oldest first (a panel session: the target's values,
    their past covariates, and the future covariates of the H steps after the last of them)."""

    observations: list[Row] | list[float] = Field(..., min_length=1)
    timestamps: list[str] | None = None
    past_covariates: dict[Name, list[float | None]] | None = Field(None, max_length=MAX_COLUMNS)
    future_covariates: dict[Name, list[float]] | None = Field(
        None, max_length=MAX_COLUMNS, description="A panel session: the H steps after the last observation."
    )


class SessionUpdate(ObserveBody):
    """One series' update in POST /session-updates: the body of POST /sessions/{id} and its id."""

    id: str = Field(..., min_length=1, max_length=200, description="The session's id (a panel session: the series id).")


class SessionUpdatesBody(_Body):
    """POST /session-updates: several sessions' updates in one request (a stream consumer's
    batch), each applied as POST /sessions/{id} applies it, exactly once, answered in order."""

    model: str | None = Field(
        None, description="If given, every session must be this model's (an item of another model's is refused)."
    )
    updates: list[SessionUpdate] = Field(
        ...,
        min_length=1,
        description="One update per session (an id at most once), at most RNNOPS_FORECAST_MAX_WINDOWS of them.",
    )
