"""Forecasts over HTTP: ``POST /forecast`` and the stateful sessions (``/sessions``).

Transport only: check a body against the model and the server's limits, hand windows to the
model's :class:`~rnnops.serving.forecast.batcher.ForecastBatcher` (which groups and cuts them)
or observations to a session (applied by its version's
:class:`~rnnops.serving.forecast.stepper.SessionStepper`, batched across sessions), and answer.
Future timestamps come from :mod:`rnnops.timeseries`, the same code the batch job uses,
so the same history gives the same timestamps over HTTP, in a session and in a batch file.

The ``/forecast`` body is decoded by :func:`forecast_body`: orjson reads the windows straight
into arrays (pydantic would build and check a Python float per value: ~0.4 ms for a 96x7
window) and pydantic validates every other field of :class:`ForecastBody` as usual, so the fast
path is not a second schema: a field added to the model is validated and defaulted there too.

A panel model is asked by series (``series``: each with its id, history, covariates and statics):
:mod:`rnnops.panel_features` turns each entry into the model's graph inputs (the one
implementation batch jobs use too), the batcher runs them with other requests' series, and the
answer gives per series its forecast timestamps, forecast, quantiles and warnings.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from rnnops import panel_features, timeseries
from rnnops.serving.errors import InputError
from rnnops.serving.forecast.sessions import PanelSeries
from rnnops.serving.http.errors import JSONResponse, as_api_error, internal_error, parse_body, validation_error
from rnnops.serving.http.schemas import ForecastBody, ObserveBody, OpenSessionBody, SeriesItem, SessionUpdatesBody

if TYPE_CHECKING:
    from rnnops.serving.forecast.sessions import ForecastSession
    from rnnops.serving.http.app import Serving
    from rnnops.serving.runtime import ModelInfo

ARRAY_FIELDS = ("context", "contexts")  # what forecast_body reads itself; pydantic checks the rest


# --------------------------------------------------------------------------------- bodies


def _window_array(rows: object) -> np.ndarray | None:
    """A JSON window (T rows of F numbers) as an array, or None if it is anything else."""
    if type(rows) is not list:
        return None
    try:
        a = np.array(rows)
    except ValueError:  # ragged
        return None
    return a if a.ndim == 2 and a.dtype.kind in "fi" else None


def _fast_forecast_body(raw: bytes) -> ForecastBody | None:
    """The usual well-formed body with its windows as arrays; None for anything else (then the
    caller validates the whole body with pydantic and gets its error messages)."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict:
        return None
    arrays: dict[str, Any] = {}  # the windows as arrays, by field (`contexts`: a list of them)
    context = d.pop("context", None)
    if context is not None:
        arrays["context"] = _window_array(context)
        if arrays["context"] is None:
            return None
    contexts = d.pop("contexts", None)
    if contexts is not None:
        if type(contexts) is not list:
            return None
        arrays["contexts"] = [_window_array(w) for w in contexts]
        if any(w is None for w in arrays["contexts"]):
            return None
    try:
        body = ForecastBody.model_validate(d)  # every other field, by the model's own rules
    except ValidationError:
        return None
    return body.model_copy(update=arrays)


async def forecast_body(request: Request) -> ForecastBody:
    raw = await request.body()
    body = _fast_forecast_body(raw)
    if body is not None:
        return body
    try:
        return ForecastBody.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_rows(
    rows: list[list[float]] | np.ndarray, info: ModelInfo, field: str, min_rows: int, max_rows: int
) -> np.ndarray:
    """``rows`` (T lists of F raw values, or a ``[T, F]`` array) -> float32 ``[T, F]``, or an
    :class:`InputError` naming what to change."""
    f = len(info.feature_names)
    if len(rows) < min_rows:
        need = (
            f"this windowed model needs at least {min_rows} rows (its lookback)"
            if not info.stateful
            else f"at least {min_rows} row is needed"
        )
        raise InputError(f"{field} has {len(rows)} rows; {need}", field)
    if len(rows) > max_rows:
        raise InputError(f"{field} has {len(rows)} rows; the limit is {max_rows} (RNNOPS_MAX_CONTEXT_ROWS)", field)
    if not (isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == f):
        for i, r in enumerate(rows):
            if len(r) != f:
                raise InputError(
                    f"{field}[{i}] has {len(r)} values; the model expects {f} features "
                    f"({', '.join(info.feature_names)}) in that order",
                    field,
                )
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), f)
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        i, j = np.argwhere(~np.isfinite(x32))[0]
        raise InputError(f"{field}[{i}][{j}] = {x[i, j]!r} is not a finite float32 value", field)
    return x32


# --------------------------------------------------------------------------------- timestamps


def parse_timestamps(values: list[str], field: str) -> np.ndarray:
    """ISO strings -> int64 ns, or a 400 naming the bad entry."""
    try:
        return timeseries.parse_iso(values)
    except timeseries.TimestampError as exc:
        text = str(exc)
        raise InputError(f"{field}{text}" if text.startswith("[") else f"{field} {text}", field) from None


def future_timestamps(history: np.ndarray, info: ModelInfo, field: str, freq: str | None) -> list[str]:
    """The forecast's timestamps after ``history`` (the rows the model reads), as the batch job
    computes them; a 400 when they cannot be told (irregular spacing and no ``freq``)."""
    if info.lookback:
        history = history[-info.lookback :]
    try:
        return timeseries.iso(timeseries.future(history, info.horizon, freq=freq, model_freq=info.freq, flag="freq"))
    except timeseries.TimestampError as exc:
        raise InputError(f"{field}: {exc}", field) from None


def _stamps_for(ts_list: list[str], rows: np.ndarray, info: ModelInfo, field: str, freq: str | None) -> list[str]:
    if len(ts_list) != len(rows):
        raise InputError(f"{field} has {len(ts_list)} timestamps for {len(rows)} rows", field)
    return future_timestamps(parse_timestamps(ts_list, field), info, field, freq)


# --------------------------------------------------------------------------------- /forecast


async def forecast(serving: Serving, request: Request) -> Response:
    cfg = serving.config
    body = await forecast_body(request)
    if body.series is not None:
        return await forecast_series(serving, body)
    model = serving.models.get(body.model, "forecaster")
    info = model.runtime.info
    if (body.context is None) == (body.contexts is None):
        raise InputError("give exactly one of `context` (T rows of F values) or `contexts` (a list of them)")
    single = body.context is not None
    raw = [body.context] if body.context is not None else (body.contexts or [])
    _check_count(len(raw), "windows", "contexts", cfg.forecast_max_windows)
    min_rows = 1 if info.stateful else info.lookback
    names = ["context"] if single else [f"contexts[{i}]" for i in range(len(raw))]
    windows = [check_rows(w, info, n, min_rows, cfg.max_context_rows) for w, n in zip(raw, names)]
    stamps = None
    if body.timestamps is not None:
        ts = [body.timestamps] if single else body.timestamps
        if single and (not ts[0] or not isinstance(ts[0][0], str)):
            raise InputError("timestamps must be a list of strings, one per context row", "timestamps")
        if not single and (len(ts) != len(windows) or any(not isinstance(t, list) for t in ts)):
            raise InputError("timestamps must hold one list per window in contexts", "timestamps")
        per_window = cast("list[list[str]]", ts)  # checked above: one list of strings per window
        stamps = [
            _stamps_for(t, w, info, "timestamps" if single else f"timestamps[{i}]", body.freq)
            for i, (t, w) in enumerate(zip(per_window, windows))
        ]
    batcher = model.batcher
    assert batcher is not None, "every forecaster has its batcher"
    bands = await batcher.forecast_bands(windows)  # [horizon, F_out] float32 each, serialised by orjson as is
    y = [f for f, _ in bands]
    resp = {"model": model.name, "version": model.version, "targets": list(info.target_names), "horizon": info.horizon}
    if single:
        resp["forecast"] = y[0]
        if stamps:
            resp["timestamps"] = stamps[0]
    else:
        resp["forecasts"] = y
        if stamps:
            resp["timestamps"] = stamps
    if info.quantiles:  # prediction intervals: {"0.1": [horizon x F_out], ...} beside each forecast
        # a model with quantiles gives them for every window
        per = [quantiles_view(info.quantiles, cast(np.ndarray, q)) for _, q in bands]
        resp["quantiles"] = per[0] if single else per
    return JSONResponse(resp)


def _check_count(n: int, noun: str, field: str, limit: int) -> None:
    """A request's windows or series: at least one, at most RNNOPS_FORECAST_MAX_WINDOWS."""
    if not n:
        raise InputError(f"{field} is empty", field)
    if n > limit:
        raise InputError(f"{n} {noun}; the limit per request is {limit} (RNNOPS_FORECAST_MAX_WINDOWS)", field)


async def forecast_series(serving: Serving, body: ForecastBody) -> Response:
    """``/forecast`` with ``series``: a panel model's forecast per series."""
    cfg = serving.config
    others = [f for f in ("context", "contexts", "timestamps", "freq") if getattr(body, f) is not None]
    if others:
        raise InputError(
            f"give either `series` (a panel model) or `context`/`contexts`, not both (this body also has "
            f"`{others[0]}`; a series' timestamps go inside its entry)",
            others[0],
        )
    model = serving.models.get(body.model, "panel")
    contract = model.runtime.info.panel
    assert contract is not None and model.batcher is not None, "a panel model has its contract and batcher"
    series = cast("list[SeriesItem]", body.series)
    _check_count(len(series), "series", "series", cfg.forecast_max_windows)
    for k, s in enumerate(series):  # the server's limit first: an oversized request costs nothing more
        if len(s.context) > cfg.max_context_rows:
            raise InputError(
                f"series {s.id!r} has {len(s.context)} context values; the limit is {cfg.max_context_rows} "
                f"(RNNOPS_MAX_CONTEXT_ROWS; the model reads the last {contract.lookback})",
                f"series[{k}].context",
            )
    try:
        panel_features.check_ids([s.id for s in series])
        features = [
            panel_features.series_features(
                panel_features.SeriesEntry(
                    s.id, s.timestamps, s.context, s.past_covariates, s.future_covariates, s.static, s.start
                ),
                contract,
            )
            for s in series
        ]
    except panel_features.SeriesError as exc:
        raise InputError(str(exc), "series") from None
    # each series' inputs as they are: the batcher stacks them with other requests' series
    bands = await model.batcher.forecast_series([f.inputs for f in features])
    target = contract.target
    levels = [f"{level:g}" for level in contract.quantiles]
    answers = []
    for f, (y, q) in zip(features, bands):
        answer: dict[str, Any] = {
            "id": f.id,
            "timestamps": _iso(f.future.tobytes()),
            "forecast": {target: y[:, 0]},
        }
        if q is not None:
            by_level = np.ascontiguousarray(q[:, 0, :].T)  # [levels, H]: each level's row is contiguous for orjson
            answer["quantiles"] = {level: {target: by_level[j]} for j, level in enumerate(levels)}
        answer["warnings"] = list(f.warnings)
        answers.append(answer)
    return JSONResponse(
        {
            "model": model.name,
            "version": model.version,
            "targets": [target],
            "horizon": contract.horizon,
            "series": answers,
        }
    )


@lru_cache(maxsize=256)
def _iso(future: bytes) -> tuple[str, ...]:
    """A forecast's timestamps (int64 ns bytes) as ISO strings: series that share their dates
    (most of a panel's) share them, so each distinct horizon is formatted once."""
    return tuple(timeseries.iso(np.frombuffer(future, np.int64)))


def quantiles_view(levels: Sequence[float], q: np.ndarray) -> dict[str, np.ndarray]:
    """``q [horizon, F_out, levels]`` -> ``{"0.1": [horizon x F_out], ...}`` (keys: the levels)."""
    return {f"{level:g}": np.ascontiguousarray(q[..., k]) for k, level in enumerate(levels)}


# --------------------------------------------------------------------------------- sessions


def session_view(serving: Serving, sess: ForecastSession, forecast: np.ndarray | None) -> dict[str, Any]:
    info = sess.model.runtime.info
    if sess.panel is not None:
        return _series_session_view(serving, sess, forecast)
    d: dict[str, Any] = {
        "session_id": sess.id,
        "model": sess.model.name,
        "version": sess.model.version,
        "stateful": sess.stateful,
        "observations": sess.observations,
        "needs": sess.needs,
        "targets": list(info.target_names),
        "forecast": forecast,  # orjson writes arrays as they are
        "expires_in_s": serving.sessions.ttl_s,
    }
    bands = getattr(sess, "last_quantiles", None)
    if forecast is not None and bands is not None:
        d["quantiles"] = quantiles_view(info.quantiles, bands)
    if forecast is not None and len(sess.timestamps):
        try:
            d["timestamps"] = future_timestamps(sess.timestamps, info, "timestamps", sess.freq)
        except InputError:  # one timestamp and no frequency to go on: none to give (checked in _observe)
            pass
    return d


async def _observe(
    serving: Serving,
    sess: ForecastSession,
    rows_raw: list[list[float]],
    ts_raw: list[str] | None,
    field: str,
) -> np.ndarray | None:
    info = sess.model.runtime.info
    rows = check_rows(rows_raw, info, field, 1, serving.config.max_context_rows)
    if ts_raw is not None:
        if len(ts_raw) != len(rows):
            raise InputError(f"timestamps has {len(ts_raw)} entries for {len(rows)} rows", "timestamps")
        ts = parse_timestamps(ts_raw, "timestamps")
        if len(sess.timestamps) and ts[0] <= sess.timestamps[-1]:
            last = timeseries.iso(sess.timestamps[-1:])[0]
            raise InputError(f"timestamps must come after the session's last one ({last})", "timestamps")
        history = np.concatenate([sess.timestamps, ts])
        if len(history) >= 2:  # irregular spacing is refused before the observation is applied
            future_timestamps(history, info, "timestamps", sess.freq)
    y = await sess.observe(rows)  # the version's stepper: batched with the other sessions' updates
    if ts_raw is not None:
        sess.add_timestamps(ts)
    return y


PANEL_FIELDS = ("static", "past_covariates", "future_covariates", "start")  # a panel session's own


def _rows_only(rows: list[Any] | None, field: str) -> None:
    """A forecaster's rows are lists of F values; a flat list is a panel session's form."""
    if rows and not isinstance(rows[0], list):
        raise InputError(f"{field} must be rows of the model's feature values (a flat list is a panel series')", field)


def _series_session_view(serving: Serving, sess: ForecastSession, y: np.ndarray | None) -> dict[str, Any]:
    p, c = sess.panel, sess.model.runtime.info.panel
    assert p is not None and c is not None
    d: dict[str, Any] = {
        "session_id": sess.id,
        "id": p.id,
        "model": sess.model.name,
        "version": sess.model.version,
        "stateful": False,
        "observations": sess.observations,
        "needs": 0,
        "targets": [c.target],
        "forecast": None if y is None else {c.target: np.ascontiguousarray(y[:, 0])},
        "expires_in_s": serving.sessions.ttl_s,
    }
    q = sess.last_quantiles
    if y is not None:
        d["timestamps"] = timeseries.iso(p.future)
        if q is not None:
            d["quantiles"] = {
                f"{lv:g}": {c.target: np.ascontiguousarray(q[:, 0, k])} for k, lv in enumerate(c.quantiles)
            }
        d["warnings"] = list(sess.warnings)
    return d


async def _forecast_series(sess: ForecastSession, series: PanelSeries) -> np.ndarray:
    """Forecast ``series`` as /forecast would (its version's batcher) and, only then, make it the
    session's: a failed update leaves the session as it was."""
    c = sess.model.runtime.info.panel
    assert c is not None and sess.model.batcher is not None
    try:
        f = panel_features.series_features(series.entry(), c)
    except panel_features.SeriesError as exc:
        raise InputError(str(exc), exc.field) from None
    ((y, q),) = await sess.model.batcher.forecast_series([f.inputs])
    sess.panel = dataclasses.replace(series, future=f.future)
    sess.last_forecast, sess.last_quantiles, sess.warnings = y, q, f.warnings
    return y


def _values(columns: Mapping[str, Sequence[float | None]] | None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in (columns or {}).items()}


def _targets(values: list[Any], field: str) -> np.ndarray:
    """A panel session's target values: a flat list, or rows of one value."""
    a = np.asarray(values, np.float64) if values else np.zeros(0)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise InputError(f"{field} must be the target's values, one per step (a panel model forecasts one)", field)
    return a


async def open_series_session(serving: Serving, body: OpenSessionBody) -> Response:
    """POST /sessions with ``id``: a panel model's session for that series (replacing an open
    one of the same id), forecast at once."""
    assert body.id is not None
    if body.freq is not None:
        raise InputError("a panel session follows its model's frequency: leave out `freq`", "freq")
    model = serving.models.get(body.model, "panel")
    c = model.runtime.info.panel
    assert c is not None
    context = body.context or []
    if len(context) > serving.config.max_context_rows:
        raise InputError(
            f"context has {len(context)} values; the limit is {serving.config.max_context_rows}", "context"
        )
    entry = panel_features.SeriesEntry(
        body.id,
        body.timestamps or [],
        context,
        body.past_covariates or {},
        body.future_covariates or {},
        body.static or {},
        body.start,
    )
    try:  # every check of a /forecast entry, one line each, before anything is kept
        panel_features.series_features(entry, c)
    except panel_features.SeriesError as exc:
        raise InputError(str(exc), exc.field) from None
    y = _targets(context, "context")
    n, L = len(y), c.lookback
    ts = parse_timestamps(body.timestamps or [], "timestamps")
    future = _values(body.future_covariates)
    f32 = np.float32  # what the graph reads (checked above: every value fits)
    series = PanelSeries(
        id=body.id,
        static=dict(body.static or {}),
        timestamps=ts[-L:],
        context=y[-L:].astype(f32),
        past={k: v[-L:].astype(f32) for k, v in _values(body.past_covariates).items()},
        known={k: future[k][:n][-L:].astype(f32) for k in c.future_covariates},
        ahead={k: future[k][n:].astype(f32) for k in c.future_covariates},
        start=None if n or body.start is None else int(parse_timestamps([body.start], "start")[0]),
    )
    store = serving.sessions

    async def first(sess: ForecastSession) -> np.ndarray:
        sess.observations = n
        return await _forecast_series(sess, series)

    sess = await store.open(model, session_id=body.id)
    try:
        sess, y_out = await store.update(sess.id, first)
    except BaseException:
        await store.close(sess.id)
        raise
    return JSONResponse(session_view(serving, sess, y_out), status_code=201)


async def _observe_series(serving: Serving, sess: ForecastSession, body: ObserveBody) -> np.ndarray:
    c = sess.model.runtime.info.panel
    assert c is not None and sess.panel is not None
    if body.timestamps is None:
        raise InputError("a panel session's observations need their `timestamps`", "timestamps")
    if len(body.observations) > serving.config.max_context_rows:
        raise InputError(f"{len(body.observations)} observations; the limit is {serving.config.max_context_rows}")
    obs = _targets(body.observations, "observations")
    ts = parse_timestamps(body.timestamps, "timestamps")
    try:
        series = sess.panel.advanced(
            c.lookback, ts, obs, _values(body.past_covariates), _values(body.future_covariates)
        )
    except panel_features.SeriesError as exc:
        raise InputError(str(exc), exc.field) from None
    y = await _forecast_series(sess, series)
    sess.observations += len(obs)
    return y


async def open_session(serving: Serving, request: Request) -> Response:
    body = await parse_body(request, OpenSessionBody)
    if body.id is not None:
        return await open_series_session(serving, body)
    given = [f for f in PANEL_FIELDS if getattr(body, f) is not None]
    if given:
        raise InputError(f"`{given[0]}` is for a panel model's session, which is named by the series' `id`", given[0])
    _rows_only(body.context, "context")
    model = serving.models.get(body.model, "forecaster")
    if body.freq is not None:
        try:
            timeseries.check_freq(body.freq, flag="freq")
        except timeseries.TimestampError as exc:
            raise InputError(str(exc), "freq") from None
    store = serving.sessions
    sess = await store.open(model, freq=body.freq)
    y = None
    rows = cast("list[list[float]]", body.context)  # rows: _rows_only checked it

    async def first(sess: ForecastSession) -> np.ndarray | None:
        return await _observe(serving, sess, rows, body.timestamps, "context")

    try:
        if body.context:
            sess, y = await store.update(sess.id, first)
    except BaseException:
        await store.close(sess.id)
        raise
    return JSONResponse(session_view(serving, sess, y), status_code=201)


async def apply_update(serving: Serving, sid: str, body: ObserveBody, model: str | None = None) -> dict[str, Any]:
    """``body``'s observations applied to session ``sid``, exactly once, in whichever store holds
    it (Redis: re-applied if another write came first); the session's answer. A failed update
    leaves the session as it was. ``model``: the session must be this model's."""

    async def apply(sess: ForecastSession) -> np.ndarray | None:
        if model is not None and sess.model.name != model:
            raise InputError(f"session {sid!r} is model {sess.model.name!r}'s, not {model!r}'s", "model")
        if sess.panel is not None:
            return await _observe_series(serving, sess, body)
        for f in ("past_covariates", "future_covariates"):
            if getattr(body, f) is not None:
                raise InputError(f"`{f}` is for a panel model's session; this one is a forecaster's", f)
        _rows_only(body.observations, "observations")
        rows = cast("list[list[float]]", body.observations)
        return await _observe(serving, sess, rows, body.timestamps, "observations")

    sess, y = await serving.sessions.update(sid, apply)
    return session_view(serving, sess, y)


async def update_session(serving: Serving, request: Request) -> Response:
    body = await parse_body(request, ObserveBody)
    return JSONResponse(await apply_update(serving, request.path_params["session_id"], body))


async def update_sessions(serving: Serving, request: Request) -> Response:
    """POST /session-updates: several sessions' updates in one request, each applied as
    POST /sessions/{id} applies it. They run together, so the store pipelines their Redis
    commands and the batcher runs their forecasts in shared calls; each item answers on its own
    (a failed one is an error entry and leaves its session as it was), in the request's order."""
    body = await parse_body(request, SessionUpdatesBody)
    _check_count(len(body.updates), "updates", "updates", serving.config.forecast_max_windows)
    try:  # two updates of one series in one request would race each other: refuse the request
        panel_features.check_ids([u.id for u in body.updates])
    except panel_features.SeriesError as exc:
        raise InputError(f"{exc}: join its observations in one update", "updates") from None
    answers = await asyncio.gather(
        *(apply_update(serving, u.id, u, body.model) for u in body.updates), return_exceptions=True
    )
    results = []
    for u, a in zip(body.updates, answers):
        if isinstance(a, dict):
            results.append(a)
            continue
        if not isinstance(a, Exception):  # cancelled (the request's deadline): not an item's failure
            raise a
        e = as_api_error(a) or internal_error(f"POST /session-updates, session {u.id!r}", a)
        results.append({"id": u.id, "error": {"status": e.status, "code": e.kind, "message": e.message, **e.extra}})
    return JSONResponse({"results": results})


async def get_session(serving: Serving, request: Request) -> Response:
    sess = await serving.sessions.read(request.path_params["session_id"])
    return JSONResponse(session_view(serving, sess, sess.last_forecast))


async def close_session(serving: Serving, request: Request) -> Response:
    sess = await serving.sessions.close(request.path_params["session_id"])
    return JSONResponse({"session_id": sess.id, "closed": True, "observations": sess.observations})
