"""Register exported runs as model versions, promote them through a gate, roll champions back.

All of it lives in the MLflow Model Registry: a version's facts are version tags (sha256 of the
ONNX, parity result, validation metric, source run, cell, rnnops version), ``champion`` /
``challenger`` are MLflow aliases, and the champion history that ``rollback`` pops is a JSON
registered-model tag. No registry of our own, no torch.

- :func:`register_run`: a run that ``rnnops export`` passed becomes a new version (all or nothing).
- :func:`promote`: move an alias to a version. For ``champion`` the gate is: parity passed and
  the validation metric no worse (lower or equal) than the current champion's. ``force`` skips
  the metric comparison and is recorded on the version; a failed parity gate is never promoted.
- :func:`rollback`: ``champion`` goes back to the previous champion.
"""

from __future__ import annotations

import getpass
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnops import contract as C
from rnnops import settings
from rnnops.errors import RnnopsError
from rnnops.onnx_metadata import Metadata, read_metadata
from rnnops.registry import store
from rnnops.util import sha256_file

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

HISTORY_MAX = 50  # champion history entries kept (a tag value is at most a few KB)
# rnnops.task -> kind
KINDS_BY_TASK = {"char": "char", "forecast": "forecaster", "forecaster": "forecaster", "panel": "panel"}


@dataclass
class VersionInfo:
    """One registered model version, as the registry records it."""

    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    source: str
    run_id: str | None
    created_at: int | None = None  # ms since epoch
    created: bool = True  # False when register_run found this run already registered

    @classmethod
    def from_mlflow(cls, mv: ModelVersion, created: bool = True) -> VersionInfo:
        return cls(
            name=mv.name,
            version=int(mv.version),
            aliases=sorted(mv.aliases or []),
            tags=dict(mv.tags or {}),
            source=mv.source,
            run_id=mv.run_id,
            created_at=mv.creation_timestamp,
            created=created,
        )

    @property
    def sha256(self) -> str | None:
        return self.tags.get(C.VTAG_ONNX_SHA256)

    @property
    def int8_sha256(self) -> str | None:
        """sha256 of the version's ``model.int8.onnx``; None: the version carries no int8 file."""
        return self.tags.get(C.VTAG_INT8_SHA256)

    @property
    def kind(self) -> str | None:
        return self.tags.get(C.VTAG_KIND)

    @property
    def cell(self) -> str | None:
        return self.tags.get(C.VTAG_CELL)

    @property
    def parity_passed(self) -> bool:
        return self.tags.get(C.VTAG_PARITY_PASSED) == "true"

    @property
    def val_metric(self) -> str | None:
        return self.tags.get(C.VTAG_VAL_METRIC)

    @property
    def val_value(self) -> float | None:
        metric = self.val_metric
        raw = self.tags.get(f"rnnops.{metric}") if metric else None
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "uri": self.uri,
            "sha256": self.sha256,
            "int8_sha256": self.int8_sha256,
            "val_metric": self.val_metric,
            "val_value": self.val_value,
            "parity_passed": self.parity_passed,
        }


@dataclass
class Promotion:
    """What :func:`promote` / :func:`rollback` did."""

    name: str
    version: int
    alias: str
    previous: int | None  # the version the alias pointed at before
    changed: bool  # False when the alias already pointed at this version
    forced: bool = False
    reason: str = ""  # why the gate let it through (or what --force overrode)


@dataclass
class ModelSummary:
    name: str
    kind: str | None
    aliases: dict[str, int]
    versions: int
    latest: int | None
    description: str | None = None


@dataclass
class ModelDetails:
    name: str
    kind: str | None
    aliases: dict[str, int]
    champion_history: list[dict[str, Any]]
    versions: list[VersionInfo] = field(default_factory=list)
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "aliases": self.aliases,
            "champion_history": self.champion_history,
            "description": self.description,
            "versions": [v.to_dict() for v in self.versions],
        }


# ------------------------------------------------------------------------------- register


def register_run(run_id: str, name: str | None = None, metric: str | None = None) -> VersionInfo:
    """Register the exported ONNX of ``run_id`` as a new version of ``char-rnn`` / ``forecaster`` /
    ``panel-forecaster`` (by its kind, unless ``name``), gated later on ``metric`` (default the
    kind's ``contract.VAL_METRIC``; one of ``contract.VAL_METRICS[kind]``: a panel model's
    ``val_mase`` or ``val_wql``).

    Refuses a run without an export, a run whose parity gate failed, and a logged ONNX that does
    not hash to what export recorded. The version is created with all its tags, or not at all.
    Registering the same run (same ONNX) twice returns the existing version.
    """
    c = store.client()
    run_id = run_id.strip().removeprefix("runs:/").strip("/")
    run = _get_run(c, run_id)
    tags = run.data.tags
    onnx_uri = tags.get(C.TAG_ONNX_URI)
    if not onnx_uri:
        raise RnnopsError(
            f"run {run_id} has no ONNX export (no {C.TAG_ONNX_URI} tag): run `rnnops export {run_id}` first"
        )
    passed = tags.get(C.TAG_PARITY_PASSED)
    if passed != "true":
        state = "failed" if passed == "false" else "has no recorded result"
        raise RnnopsError(
            f"run {run_id}: the export parity gate {state} (max abs diff {tags.get(C.TAG_PARITY_MAX_DIFF, '?')}); "
            "a version whose gate failed is not registered; fix the export and run `rnnops export` again"
        )
    sha = tags.get(C.TAG_ONNX_SHA256)
    if not sha:
        raise RnnopsError(f"run {run_id} has no {C.TAG_ONNX_SHA256} tag: run `rnnops export {run_id}` again")

    int8_sha = tags.get(C.TAG_INT8_SHA256)  # set only when the export's int8 gates kept the file

    with tempfile.TemporaryDirectory(prefix="rnnops-register-") as tmp:
        path = store.download_logged_onnx(c, onnx_uri, Path(tmp))
        actual = sha256_file(path)
        if actual != sha:
            raise RnnopsError(
                f"the ONNX logged by run {run_id} ({onnx_uri}) hashes to {actual[:16]}…, not the {sha[:16]}… export "
                "recorded; refusing to register it (it must be one self-contained file: log it with "
                "mlflow.onnx.log_model(..., save_as_external_data=False))"
            )
        int8_path = None
        if int8_sha:
            int8_path = store.download_logged_onnx(c, onnx_uri, Path(tmp) / "int8", C.INT8_FILE)
            actual = sha256_file(int8_path)
            if actual != int8_sha:
                raise RnnopsError(
                    f"the {C.INT8_FILE} logged by run {run_id} ({onnx_uri}) hashes to {actual[:16]}…, "
                    f"not the {int8_sha[:16]}… export recorded; refusing to register it (export again)"
                )
        meta = read_metadata(path)
        kind = _kind(meta, tags, run_id)
        name = store.check_name(name or C.DEFAULT_NAMES[kind])
        metric = _check_metric(metric, kind)
        value = _final_metric(c, run, metric)
        if value is None:
            raise RnnopsError(
                f"run {run_id} has no {metric} metric: the promotion gate needs it (was the run finished?)"
            )
        vtags = {
            C.VTAG_KIND: kind,
            C.VTAG_CELL: str(meta.get("cell") or run.data.params.get("model.cell") or "unknown"),
            C.VTAG_VERSION: str(meta.get("version") or tags.get("rnnops.version") or "unknown"),
            C.VTAG_SOURCE_RUN: str(meta.get("source_run") or run_id),
            C.VTAG_ONNX_SHA256: sha,
            C.VTAG_PARITY_PASSED: "true",
            C.VTAG_PARITY_MAX_DIFF: str(tags.get(C.TAG_PARITY_MAX_DIFF, "")),
            C.VTAG_VAL_METRIC: metric,
            f"rnnops.{metric}": repr(float(value)),
        }
        if int8_sha:
            vtags[C.VTAG_INT8_SHA256] = int8_sha

        existing = _already_registered(c, name, run_id, sha)
        if existing is not None:
            return existing
        created_model = _ensure_registered_model(c, name, kind)
        info = _create_version(c, name, onnx_uri, run_id, vtags, created_model)
        _warm_cache(info, path, meta, int8_path)
        return info


def _create_version(
    c: MlflowClient, name: str, onnx_uri: str, run_id: str, vtags: dict[str, str], created_model: bool
) -> VersionInfo:
    """Create the version with its tags; on any failure leave nothing behind."""
    mv = None
    try:
        with store.mlflow_errors(f"registering {onnx_uri} as a version of {name}"):
            mv = c.create_model_version(
                name,
                source=onnx_uri,
                run_id=run_id,
                tags=vtags,
                model_id=store.logged_model_id(onnx_uri),
                description=f"ONNX exported from run {run_id}",
            )
            return _complete_version(c, mv, vtags)
    except BaseException:
        _undo_registration(c, name, mv, created_model)
        raise


def _complete_version(c: MlflowClient, mv: ModelVersion, vtags: dict[str, str]) -> VersionInfo:
    """Check the new version is READY and carries every tag (set any the store dropped)."""
    from mlflow.entities.model_registry.model_version_status import ModelVersionStatus

    if mv.status != ModelVersionStatus.to_string(ModelVersionStatus.READY):
        raise RnnopsError(f"{mv.name} version {mv.version} did not become READY ({mv.status}: {mv.status_message})")
    have = dict(mv.tags or {})
    for key, value in vtags.items():
        if have.get(key) != value:
            c.set_model_version_tag(mv.name, str(mv.version), key, value)
    mv = c.get_model_version(mv.name, str(mv.version))
    missing = [k for k, v in vtags.items() if (mv.tags or {}).get(k) != v]
    if missing:
        raise RnnopsError(f"{mv.name} version {mv.version} lost tags {missing} on write")
    return VersionInfo.from_mlflow(mv)


def _undo_registration(c: MlflowClient, name: str, mv: ModelVersion, created_model: bool) -> None:
    import contextlib

    if mv is not None:
        with contextlib.suppress(Exception):
            c.delete_model_version(name, str(mv.version))
    if created_model:
        with contextlib.suppress(Exception):
            if not store.search_versions(c, name):
                c.delete_registered_model(name)


def _get_run(c: MlflowClient, run_id: str) -> Run:
    from mlflow.exceptions import MlflowException

    with store.mlflow_errors(f"reading run {run_id}"):
        try:
            return c.get_run(run_id)
        except MlflowException as exc:
            if store._code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RnnopsError(f"no MLflow run {run_id!r} in {settings.tracking_uri()}") from None
            raise


def _final_metric(c: MlflowClient, run: Run, metric: str) -> float | None:
    """The last value logged for ``metric`` (by time), i.e. the final evaluation.

    Not ``run.data.metrics``: MLflow's "latest" prefers the highest step, and training logs its
    final metrics without a step (step 0) after the step-numbered evaluations.
    """
    with store.mlflow_errors(f"reading {metric} of run {run.info.run_id}"):
        history = c.get_metric_history(run.info.run_id, metric)
    if history:
        return float(max(history, key=lambda m: (m.timestamp, m.step)).value)
    value = run.data.metrics.get(metric)
    return None if value is None else float(value)


def _check_metric(metric: str | None, kind: str) -> str:
    """The gate's metric for a version of ``kind``: ``metric`` if the kind may be gated on it."""
    if metric is None:
        return C.VAL_METRIC[kind]
    allowed = C.VAL_METRICS[kind]
    if metric not in allowed:
        raise RnnopsError(f"--metric {metric!r} is not one a {kind} model is gated on: use {' or '.join(allowed)}")
    return metric


def _kind(meta: Metadata, run_tags: dict[str, str], run_id: str) -> str:
    kind = meta.get("kind")
    if kind in C.DEFAULT_NAMES:
        return str(kind)
    kind = KINDS_BY_TASK.get(run_tags.get("rnnops.task", ""))
    if kind:
        return kind
    raise RnnopsError(
        f"cannot tell whether run {run_id} is a char model, a forecaster or a panel model: its ONNX has no "
        "rnnops.kind metadata and the run no rnnops.task tag"
    )


def _already_registered(c: MlflowClient, name: str, run_id: str, sha: str) -> VersionInfo | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = store.search_versions(c, name)
    except (RnnopsError, MlflowException):
        return None  # no such registered model yet
    for mv in versions:
        tags = mv.tags or {}
        if mv.run_id == run_id and tags.get(C.VTAG_ONNX_SHA256) == sha:
            return VersionInfo.from_mlflow(c.get_model_version(name, mv.version), created=False)
    return None


def _ensure_registered_model(c: MlflowClient, name: str, kind: str) -> bool:
    """Create registered model ``name`` for ``kind`` if needed; True when it was created here."""
    from mlflow.exceptions import MlflowException

    with store.mlflow_errors(f"creating registered model {name}"):
        try:
            c.create_registered_model(
                name,
                tags={C.RMTAG_KIND: kind},
                description=f"rnnops {kind} models (ONNX); `rnnops registry show {name}`",
            )
            return True
        except MlflowException as exc:
            if store._code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
        rm = c.get_registered_model(name)
        have = (rm.tags or {}).get(C.RMTAG_KIND)
        if have and have != kind:
            raise RnnopsError(
                f"registered model {name} holds {have} models and this run is a {kind} model: pass --name"
            )
        if not have:
            c.set_registered_model_tag(name, C.RMTAG_KIND, kind)
        return False


def _warm_cache(info: VersionInfo, path: Path, meta: Metadata, int8_path: Path | None = None) -> None:
    """Put the verified files in the resolve cache now, so serving's first resolve is a cache hit."""
    import contextlib

    from rnnops.registry.resolve import store_in_cache

    if info.sha256 is None:  # register_run tags every version it makes; nothing to key the cache by otherwise
        return
    with contextlib.suppress(OSError):
        store_in_cache(
            info.name,
            info.version,
            path,
            info.sha256,
            meta,
            info.tags.get(C.VTAG_SOURCE_RUN),
            int8_path=int8_path,
            int8_sha256=info.int8_sha256,
        )


# ------------------------------------------------------------------------------- promote


def promote(name: str, version: int, alias: str = C.ALIAS_CHAMPION, force: bool = False) -> Promotion:
    """Point ``alias`` at ``version`` of ``name``, through the gate.

    Every alias needs a passed parity gate (never overridable: serving would run a graph that
    differs from the trained model). ``champion`` also needs a validation metric no worse than
    the current champion's; ``force`` overrides that comparison and is recorded on the version
    (tag ``rnnops.forced_promotion``) and in the champion history.
    """
    c = store.client()
    alias = _check_alias(alias)
    rm = store.get_registered_model(c, name)
    mv = VersionInfo.from_mlflow(store.get_version(c, name, version))
    if not mv.parity_passed:
        raise RnnopsError(
            f"refused: {name} version {mv.version} has no passed parity gate "
            f"({C.VTAG_PARITY_PASSED}={mv.tags.get(C.VTAG_PARITY_PASSED, 'missing')}); "
            "a version whose gate failed cannot be promoted, not even with --force"
        )
    previous = store.alias_version(rm, alias)
    if previous == mv.version:
        return Promotion(name, mv.version, alias, previous, changed=False, reason=f"already {alias}")

    forced, reason = False, "parity passed"
    if alias == C.ALIAS_CHAMPION:
        ok, reason = _metric_gate(c, name, mv, previous)
        if not ok:
            if not force:
                raise RnnopsError(f"refused: {reason}; use --force to promote anyway (it is recorded)")
            forced = True
            record = {"alias": alias, "over": previous, "reason": reason, "at": _now(), "by": _user()}
            with store.mlflow_errors(f"tagging {name} version {mv.version}"):
                c.set_model_version_tag(name, str(mv.version), C.VTAG_FORCED, json.dumps(record))

    # Alias first, history second: if the history write fails, rollback still finds the old
    # champion on top of the stack (it is not the current one), which is the right target.
    with store.mlflow_errors(f"setting alias {alias} on {name} version {mv.version}"):
        c.set_registered_model_alias(name, alias, str(mv.version))
        if alias == C.ALIAS_CHAMPION:
            if store.alias_version(rm, C.ALIAS_CHALLENGER) == mv.version:
                c.delete_registered_model_alias(name, C.ALIAS_CHALLENGER)  # the challenger won
            history = _history(rm)
            if previous is not None and (not history or history[-1]["version"] != previous):
                history.append({"version": previous, "at": None, "forced": False})  # set outside rnnops
            history.append({"version": mv.version, "at": _now(), "forced": forced})
            _save_history(c, name, history)
    return Promotion(name, mv.version, alias, previous, changed=True, forced=forced, reason=reason)


def _metric_gate(c: MlflowClient, name: str, mv: VersionInfo, champion: int | None) -> tuple[bool, str]:
    """(passes, why): the candidate's validation metric against the current champion's."""
    if champion is None:
        return True, "parity passed; no current champion"
    cur = VersionInfo.from_mlflow(store.get_version(c, name, champion))
    metric, value = mv.val_metric, mv.val_value
    if metric is None or value is None:
        return (
            False,
            f"{name} version {mv.version} has no validation metric to compare with champion version {champion}",
        )
    if cur.val_metric != metric or cur.val_value is None:
        return False, (
            f"champion version {champion} has no {metric} to compare with (it has {cur.val_metric or 'no metric'})"
        )
    if math.isfinite(value) and value <= cur.val_value:
        return True, f"parity passed; {metric} {value:.6g} <= champion version {champion}'s {cur.val_value:.6g}"
    return (
        False,
        f"{name} version {mv.version} {metric} {value:.6g} is worse than champion version {champion}'s {cur.val_value:.6g}",
    )


def _check_alias(alias: str) -> str:
    alias = (alias or "").strip()
    if not store.NAME_RE.match(alias) or alias.isdigit() or alias == "latest":
        raise RnnopsError(f"invalid alias {alias!r}: use a word such as {C.ALIAS_CHAMPION} or {C.ALIAS_CHALLENGER}")
    return alias


# ------------------------------------------------------------------------------- rollback


def rollback(name: str) -> Promotion:
    """Move ``champion`` back to the previous champion (popping the champion history)."""
    c = store.client()
    rm = store.get_registered_model(c, name)
    current = store.alias_version(rm, C.ALIAS_CHAMPION)
    history = _history(rm)
    existing = set(store.version_numbers(c, name))
    while history and (history[-1]["version"] == current or history[-1]["version"] not in existing):
        history.pop()
    if not history:
        now = f"version {current}" if current is not None else "no champion"
        raise RnnopsError(f"{name} has no previous champion to roll back to ({now} is the first)")
    target = history[-1]["version"]
    with store.mlflow_errors(f"rolling back {name}"):
        c.set_registered_model_alias(name, C.ALIAS_CHAMPION, str(target))
        _save_history(c, name, history)
    return Promotion(
        name, target, C.ALIAS_CHAMPION, current, changed=True, reason=f"rolled back from version {current}"
    )


def _history(rm: RegisteredModel) -> list[dict[str, Any]]:
    raw = (rm.tags or {}).get(C.RMTAG_CHAMPION_HISTORY)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
        return [dict(e, version=int(e["version"])) for e in entries if isinstance(e, dict) and "version" in e]
    except (ValueError, TypeError, KeyError):
        return []  # a hand-edited tag: start over rather than fail every promotion


def _save_history(c: MlflowClient, name: str, history: list[dict[str, Any]]) -> None:
    c.set_registered_model_tag(
        name, C.RMTAG_CHAMPION_HISTORY, json.dumps(history[-HISTORY_MAX:], separators=(",", ":"))
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------- read


def list_models() -> list[ModelSummary]:
    """Every registered model, with its kind, aliases and version count."""
    c = store.client()
    with store.mlflow_errors("listing registered models"):
        models = list(c.search_registered_models(max_results=1000))
        out = []
        for rm in sorted(models, key=lambda r: r.name):
            numbers = (
                [int(v.version) for v in c.search_model_versions(f"name='{rm.name}'", max_results=10000)]
                if store.NAME_RE.match(rm.name)
                else []
            )
            out.append(
                ModelSummary(
                    rm.name,
                    (rm.tags or {}).get(C.RMTAG_KIND),
                    store.aliases_of(rm),
                    len(numbers),
                    max(numbers) if numbers else None,
                    rm.description,
                )
            )
    return out


def show(name: str) -> ModelDetails:
    """One registered model: aliases, champion history and every version with its tags."""
    c = store.client()
    rm = store.get_registered_model(c, name)
    aliases = store.aliases_of(rm)
    versions = sorted((VersionInfo.from_mlflow(mv) for mv in store.search_versions(c, name)), key=lambda v: v.version)
    for v in versions:  # search results do not carry aliases; the registered model does
        v.aliases = sorted(a for a, n in aliases.items() if n == v.version)
    return ModelDetails(rm.name, (rm.tags or {}).get(C.RMTAG_KIND), aliases, _history(rm), versions, rm.description)


def get_version(name: str, version: int) -> VersionInfo:
    c = store.client()
    return VersionInfo.from_mlflow(store.get_version(c, name, version))
