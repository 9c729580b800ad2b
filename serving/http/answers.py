"""What the native endpoints answer, as pydantic models: the response half of the API contract
(:mod:`.openapi` builds ``/docs.json`` from them and from the request bodies in :mod:`.schemas`).

The handlers build these answers as dicts (orjson writes numpy arrays as they are, which a
pydantic round trip would cost on every forecast); schemathesis checks every answer of a real
server against these models (``tests/test_protocols.py``), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Answer):
    """Every native error: what to change, a type; 400s name the `field` (pydantic's `details`)."""

    error: str
    type: str
    field: str | None = None
    details: list[dict[str, Any]] | None = None
    retry_after: int | None = None
    characters: list[str] | None = None


class Chunk(_Answer):
    """SSE `chunk` event: characters generated since the last one."""

    text: str


class Done(_Answer):
    """SSE `done` event (and the stats of /complete)."""

    chars: int
    finish_reason: str
    seed: int
    ttfc_ms: float | None
    queue_ms: float
    duration_ms: float
    chars_per_s: float | None
    prompt_chars: int
    model: str
    version: str


class StreamError(_Answer):
    """SSE `error` event: the stream ended without finishing (`type`: error, shutdown, internal...)."""

    error: str
    type: str


class Completed(Done):
    """POST /complete."""

    text: str


class SeriesForecast(_Answer):
    """One series of a panel model's answer: per target (the model's one) H values, and per
    quantile level ("0.1", "0.5"...) the same; `warnings`: e.g. a category the model never saw."""

    id: str
    timestamps: list[str]
    forecast: dict[str, list[float | None]]
    quantiles: dict[str, dict[str, list[float | None]]] | None = None
    warnings: list[str]


class Forecast(_Answer):
    """POST /forecast: `forecast` (horizon x targets) for `context`, `forecasts` for `contexts`,
    `series` (one :class:`SeriesForecast` each) for a panel model's `series`."""

    model: str
    version: str
    targets: list[str]
    horizon: int
    forecast: list[list[float | None]] | None = None
    forecasts: list[list[list[float | None]]] | None = None
    timestamps: list[str] | list[list[str]] | None = None
    series: list[SeriesForecast] | None = None


class Session(_Answer):
    """A forecast session (`forecast` is null until a windowed model has `lookback` rows)."""

    session_id: str
    model: str
    version: str
    stateful: bool
    observations: int
    needs: int
    targets: list[str]
    # a panel session's forecast is per target, as /forecast's series answers
    forecast: list[list[float | None]] | dict[str, list[float | None]] | None
    expires_in_s: float
    timestamps: list[str] | None = None
    id: str | None = None  # a panel session: the series id
    warnings: list[str] | None = None


class ItemError(_Answer):
    """Why one item of a bulk request failed: the status, type and message its own request would get."""

    status: int
    code: str
    message: str
    field: str | None = None
    retry_after: int | None = None


class SessionUpdateError(_Answer):
    """A bulk update's item that was not applied (its session is as it was)."""

    id: str
    error: ItemError


class SessionUpdates(_Answer):
    """POST /session-updates: per update, in the request's order, the session's answer or its error."""

    results: list[Session | SessionUpdateError]


class SessionClosed(_Answer):
    session_id: str
    closed: bool
    observations: int


class Models(_Answer):
    """GET /models."""

    models: list[dict[str, Any]]
    draining: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    configured: list[dict[str, Any]]
    limits: dict[str, Any]
    sessions_open: int
    scheduler: str


class Live(_Answer):
    live: bool


class Ready(_Answer):
    ready: bool


class ModelReady(_Answer):
    name: str
    ready: bool
