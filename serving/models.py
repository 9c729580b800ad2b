"""Which models are served, and hot reload: resolve refs, load versions, swap them safely.

``RNNOPS_MODELS`` is a comma-separated list of refs, each optionally ``served-name=ref``:

- ``char-rnn@champion`` / ``models:/char-rnn@champion``: the version an alias points at, resolved
  and verified (sha256) through the registry (MLflow); the alias is **watched**;
- ``char-rnn/3``: one pinned registry version;
- ``path/to/model.onnx``: a local file (its sha256 is its version; watched for changes);
- ``bentoml:char-rnn:latest``: a model saved in the BentoML model store (for a built Bento).

Precision: a model may come with an int8 file beside its fp32 one (``rnnops export`` keeps it when
its gates pass); ``RNNOPS_PRECISION`` (auto | fp32 | int8) picks which one runs
(:func:`choose_file`) and ``GET /models`` says which is live and why.

Hot reload: every ``RNNOPS_POLL_SECONDS`` the manager asks each watched ref which version it
points at (a cheap registry call). When that changed, it loads and verifies the new version off
the event loop, then swaps: new requests go to the new version, while the old version's
scheduler is closed and finishes its in-flight streams (and open forecast sessions keep their
version). A version that fails to resolve, verify or load leaves the old one serving; the failure
is logged, counted (``rnnops_model_reloads_total{result="failed"}``) and shown by ``GET /models``.

A :class:`LoadedModel` owns everything per version: its runtime, its scheduler (char models) or
forecast batcher and session stepper (forecasters), and its protocol caches; ``stop`` releases
them all. Over 400 lines because the manager's lifecycle (load, swap, drain, reap, stop) and the
version it manages are checked together: a reader follows what a hot reload releases in one file.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from rnnops import refs
from rnnops.contract import check_metadata
from rnnops.errors import RnnopsError
from rnnops.model_file_checks import check_model_file
from rnnops.refs import ModelRef
from rnnops.registry.resolve import resolve_ref
from rnnops.serving.config import ServeConfig
from rnnops.serving.errors import Overloaded, UnknownModel
from rnnops.serving.forecast.batcher import ForecastBatcher
from rnnops.serving.forecast.stepper import SessionStepper
from rnnops.serving.generate.client import GenerationClient, OnStep, SchedulerMetrics
from rnnops.serving.generate.engine import EngineClient, EngineSpec
from rnnops.serving.generate.naive import NaiveGenerator
from rnnops.serving.generate.scheduler import StepScheduler
from rnnops.serving.runtime import Runtime
from rnnops.util import return_free_memory, sha256_file

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics

log = logging.getLogger("rnnops.serving")


@dataclass(frozen=True)
class ServedRef:
    """A model reference (:mod:`rnnops.refs`) and the name clients use for it."""

    served: str
    ref: ModelRef

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def target(self) -> str:
        return self.ref.target

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def alias(self) -> str | None:
        return self.ref.alias

    @property
    def watched(self) -> bool:
        return self.ref.watched


def parse_refs(spec: str) -> list[ServedRef]:
    """``RNNOPS_MODELS`` -> the refs to serve, in order (the grammar is :mod:`rnnops.refs`)."""
    return [ServedRef(served, ref) for served, ref in refs.parse_served(spec)]


@dataclass
class Resolved:
    version: str
    path: Path  # model.onnx (fp32)
    sha256: str | None
    alias: str | None
    source_run: str | None = None
    int8_path: Path | None = None  # the verified int8 variant, when the model has one (and it was asked for)
    int8_sha256: str | None = None


def choose_file(res: Resolved, cfg: ServeConfig, served: str) -> tuple[Path, str]:
    """The file ``RNNOPS_PRECISION`` runs for this version, and why (``GET /models`` shows it).

    ``auto`` takes the int8 file when the version has one (its export's gates kept it) and the
    provider is the CPU: the int8 form is made and gated for onnxruntime's CPU kernels. ``int8``
    without an int8 file is an error, not a quiet fp32: ``auto`` already means "int8 when there is
    one", so asking for ``int8`` means requiring it (a hot reload to such a version then keeps the
    old one serving, and the failure shows in ``GET /models``).
    """
    if cfg.precision == "fp32":
        return res.path, "RNNOPS_PRECISION=fp32"
    if res.int8_path is None:
        if cfg.precision == "int8":
            raise RnnopsError(
                f"RNNOPS_PRECISION=int8 but {served} version {res.version} has no int8 file (its export "
                "did not keep one: see the run's export/quantization.json for why); serve it with "
                "RNNOPS_PRECISION=auto or fp32"
            )
        return res.path, "auto: this version has no int8 file (its export did not keep one)"
    if cfg.precision == "auto" and cfg.use_cuda:
        return res.path, "auto: the int8 file is gated for the CPU provider, and RNNOPS_PROVIDERS asks for cuda"
    return res.int8_path, f"{cfg.precision}: the int8 file its export kept (fixed scales)"


class _FileWatch:
    """A file's version = its sha256 (prefix), re-hashed only when its size or mtime change."""

    def __init__(self) -> None:
        self._stat: dict[str, tuple[int, int]] = {}  # path -> (mtime ns, size)
        self._sha: dict[str, str] = {}

    def sha(self, path: str) -> str:
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size)
        if self._stat.get(path) != key:
            self._sha[path] = sha256_file(path)
            self._stat[path] = key
        return self._sha[path]


class RegistryHealth(TypedDict):
    """The registry as the alias polls see it (GET /models shows it)."""

    reachable: bool
    error: str | None  # the last failure's first line
    since: float | None  # when it became unreachable (epoch seconds)
    failed_polls: int


class SchedulerLimits(TypedDict):
    """What every char model's generator takes (the naive one, the scheduler, the engine's)."""

    max_active: int
    max_queue: int
    queue_timeout: float
    prefill_chunk: int
    metrics: SchedulerMetrics
    name: str
    on_step: OnStep | None


@dataclass
class LoadedModel:
    ref: ServedRef
    version: str
    resolved: Resolved
    runtime: Runtime
    scheduler: GenerationClient | None = None  # char models: what generates their streams
    batcher: ForecastBatcher | None = None
    stepper: SessionStepper | None = None  # forecasters: every session update of this version (forecast/stepper.py)
    loaded_at: float = field(default_factory=time.time)
    precision_reason: str = ""  # why this file runs (choose_file)
    # the Open Inference Protocol's metadata of this version, made on first use by http/oip.py
    # (every infer checks its inputs against it) and released with the version
    oip_metadata: dict[str, Any] | None = field(default=None, repr=False)
    # the validation window embedded in a forecaster's file, for the playground: decoded on first
    # use by http/playground.py ("unread" until then; None when the file has none or a bad one)
    playground_sample: dict[str, Any] | None | Literal["unread"] = field(default="unread", repr=False)

    @property
    def name(self) -> str:
        return self.ref.served

    @property
    def kind(self) -> str:
        return self.runtime.kind

    def describe(self) -> dict[str, Any]:
        r = self.resolved
        d: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "alias": r.alias,
            "source": self.ref.source,
            "ref": self.ref.target,
            "sha256": r.sha256,
            "path": str(self.runtime.path),
            **self.runtime.describe(),  # its "precision": what the loaded file computes in
            "precision_reason": self.precision_reason,
            "files": {"fp32": r.sha256, "int8": r.int8_sha256},  # sha256 of each verified file (None: none)
            "loaded_at": round(self.loaded_at, 3),
        }
        if self.resolved.source_run and not d.get("source_run"):
            d["source_run"] = self.resolved.source_run
        if self.scheduler is not None:
            d["scheduler"] = self.scheduler.describe()
        if self.batcher is not None:
            d["batching"] = {"calls": self.batcher.calls, "windows": self.batcher.windows}
        if self.stepper is not None:  # session updates (/sessions, OIP sequences): how well they batch
            d["session_steps"] = {"calls": self.stepper.calls, "updates": self.stepper.updates}
        return d

    def close(self) -> None:
        """Stop taking new work; in-flight streams finish on this version."""
        if self.scheduler is not None:
            self.scheduler.close()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.batcher is not None:
            self.batcher.close()
        if self.stepper is not None:
            self.stepper.close()

    @property
    def busy(self) -> bool:
        if self.scheduler is not None:
            return self.scheduler.running
        return any(q is not None and q.busy for q in (self.batcher, self.stepper))


class ModelManager:
    def __init__(self, config: ServeConfig, metrics: Metrics | None = None, on_step: OnStep | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.on_step = on_step  # the transport's wake-up hook, handed to every scheduler
        self.refs = parse_refs(config.models)
        self.current: dict[str, LoadedModel] = {}
        self.draining: list[LoadedModel] = []
        self.errors: dict[str, dict[str, Any]] = {}  # served name -> last failure (cleared by a success)
        self._failed: dict[str, tuple[str | None, float]] = {}
        self._files = _FileWatch()
        self._poller: asyncio.Task[None] | None = None
        self.last_poll: float | None = None
        # The registry as the alias polls see it: while it cannot be reached, what is loaded keeps
        # serving, readiness holds, and the polls back off (doubling, at most RNNOPS_POLL_MAX_BACKOFF_S).
        self.registry = RegistryHealth(reachable=True, error=None, since=None, failed_polls=0)
        # The poller is the retry loop: MLflow's own HTTP retries (several, with exponential
        # backoff, by default) would only delay noticing that the registry is down by minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        if metrics:
            metrics.registry_up.set(1)

    # ------------------------------------------------------------------ resolution

    def _current_version(self, ref: ServedRef) -> str | None:
        """The version ``ref`` points at now (cheap); None when it cannot say without loading."""
        if ref.source == "file":
            return self._files.sha(ref.target)[:12]
        if ref.source == "registry" and ref.alias:
            from rnnops.registry.resolve import current_version

            v = current_version(ref.name, ref.alias)
            return None if v is None else str(v)
        return None

    def _resolve(self, ref: ServedRef) -> Resolved:
        sha = self._files.sha(ref.target) if ref.source == "file" and Path(ref.target).is_file() else None
        m = resolve_ref(ref.ref, sha256=sha, int8=self.config.precision != "fp32")
        for path in (m.path, m.int8_path):  # untrusted files, checked before onnxruntime opens them
            if path is not None:
                check_model_file(path)
        check_metadata(m.metadata, f"{ref.served} version {m.version}")
        return Resolved(m.version, m.path, m.sha256, m.alias, m.source_run, m.int8_path, m.int8_sha256)

    def _load(self, ref: ServedRef) -> LoadedModel:
        """Resolve, verify and open ``ref`` (blocking: run it in a thread)."""
        cfg = self.config
        res = self._resolve(ref)
        path, why = choose_file(res, cfg, ref.served)
        rt = Runtime(path, providers=cfg.providers, threads=cfg.ort_threads, iobinding=cfg.iobinding, name=ref.served)
        m = LoadedModel(ref, res.version, res, rt, precision_reason=why)
        if rt.kind == "char":
            sm = self.metrics.for_scheduler(ref.served, res.version) if self.metrics else SchedulerMetrics()
            limits = SchedulerLimits(
                max_active=cfg.max_streams,
                max_queue=cfg.max_queue,
                queue_timeout=cfg.queue_timeout_s,
                prefill_chunk=cfg.prefill_chunk,
                metrics=sm,
                name=f"{ref.served}-v{res.version}",
                on_step=self.on_step,
            )
            if cfg.scheduler == "naive":
                m.scheduler = NaiveGenerator(rt, **limits).start()
            elif cfg.engine == "thread":
                m.scheduler = StepScheduler(rt, lanes=cfg.decode_lanes, decode_steps=cfg.decode_steps, **limits).start()
            else:  # the scheduler and a session of its own in an engine process (generate/engine.py)
                spec = EngineSpec(
                    str(rt.path),
                    cfg.providers,
                    cfg.ort_threads,
                    cfg.iobinding,
                    limits["name"],
                    cfg.max_streams,
                    cfg.max_queue,
                    cfg.queue_timeout_s,
                    cfg.prefill_chunk,
                    cfg.decode_lanes,
                    cfg.decode_steps,
                )
                m.scheduler = EngineClient(spec, sm, self.on_step).start()
        else:
            m.batcher = ForecastBatcher(rt, cfg.forecast_max_batch, self.metrics, ref.served)
            if rt.info.panel is None:  # panel sessions forecast through the batcher (http/forecast.py)
                m.stepper = SessionStepper(rt, m.batcher, cfg.forecast_max_batch, ref.served, self.metrics)
        return m

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for ref in self.refs:
            await self._load_and_swap(ref, None)
        if self.config.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _load_and_swap(self, ref: ServedRef, version: str | None) -> bool:
        try:
            new = await asyncio.to_thread(self._load, ref)
        except Exception as exc:
            msg = str(exc) if isinstance(exc, RnnopsError) else f"{type(exc).__name__}: {exc}"
            self._failed[ref.served] = (version, time.monotonic())
            self.errors[ref.served] = {
                "model": ref.served,
                "ref": ref.target,
                "version": version,
                "error": msg,
                "at": round(time.time(), 3),
                "serving": self.current[ref.served].version if ref.served in self.current else None,
            }
            if self.metrics:
                self.metrics.reloads.labels(ref.served, "failed").inc()
            old = self.current.get(ref.served)
            log.error(
                "model %s (%s, version %s) failed to load: %s%s",
                ref.served,
                ref.target,
                version or "?",
                msg,
                f"; still serving version {old.version}" if old else "",
            )
            return False
        old = self.current.get(ref.served)
        self.current[ref.served] = new
        self.errors.pop(ref.served, None)
        self._failed.pop(ref.served, None)
        if self.metrics:
            self.metrics.reloads.labels(ref.served, "ok").inc()
            if new.version.isdigit():
                self.metrics.version.labels(ref.served).set(int(new.version))
        if old is not None:
            old.close()
            self.draining.append(old)
            log.warning(
                "model %s: now serving version %s (was %s; in-flight streams finish on it)",
                ref.served,
                new.version,
                old.version,
            )
        else:
            log.info(
                "model %s: serving version %s (%s, %s)",
                ref.served,
                new.version,
                new.kind,
                ", ".join(new.runtime.providers),
            )
        return True

    async def poll_once(self) -> None:
        """Check every watched ref once; load and swap what moved (or retry what never loaded)."""
        self.last_poll = time.time()
        for ref in self.refs:
            cur = self.current.get(ref.served)
            if cur is not None and not ref.watched:
                continue
            try:
                version = await asyncio.to_thread(self._current_version, ref)
            except Exception as exc:
                if ref.source == "registry":
                    self._registry_down(exc)
                else:
                    log.warning("model %s: cannot check %s: %s", ref.served, ref.target, exc)
                continue
            if ref.source == "registry":
                self._registry_up()
            if cur is not None and (version is None or version == cur.version):
                if version is not None and self._failed.pop(ref.served, None) is not None:
                    self.errors.pop(ref.served, None)  # it points back at what is served
                continue
            failed = self._failed.get(ref.served)
            if failed and failed[0] == version and time.monotonic() - failed[1] < self.config.reload_retry_s:
                continue
            await self._load_and_swap(ref, version)
        self._reap()

    def _reap(self) -> None:
        done = [m for m in self.draining if not m.busy]
        for m in done:
            m.stop()
            self.draining.remove(m)
        if done:  # the old version's session is gone now: give its memory back (docs/reliability.md)
            del done, m
            gc.collect()
            return_free_memory()

    def _registry_down(self, exc: Exception) -> None:
        r = self.registry
        first = r["reachable"]
        r.update({"reachable": False, "error": str(exc).splitlines()[0][:300], "failed_polls": r["failed_polls"] + 1})
        if first:
            r["since"] = round(time.time(), 3)
            log.warning("registry unreachable (%s): the loaded versions keep serving; polls back off", r["error"])
        if self.metrics:
            self.metrics.registry_up.set(0)

    def _registry_up(self) -> None:
        r = self.registry
        if not r["reachable"]:
            log.warning("registry reachable again after %d failed polls", r["failed_polls"])
        r.update({"reachable": True, "error": None, "since": None, "failed_polls": 0})
        if self.metrics:
            self.metrics.registry_up.set(1)

    def poll_interval(self) -> float:
        """The poll period, doubled per failed poll while the registry is unreachable."""
        base = self.config.poll_seconds
        doubled: float = base * 2 ** self.registry["failed_polls"]
        return min(doubled, max(base, self.config.poll_max_backoff_s))

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval())
            try:
                await self.poll_once()
            except Exception:
                log.exception("model poll failed")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for m in [*self.current.values(), *self.draining]:
            await asyncio.to_thread(m.stop)

    def version_of(self, name: str, version: str) -> LoadedModel | None:
        """The loaded model ``name`` at ``version`` (serving or draining), if this worker has it."""
        for m in [self.current.get(name), *self.draining]:
            if m is not None and m.name == name and m.version == version:
                return m
        return None

    def in_flight(self) -> int:
        """Streams generating or queued, and forecast windows pending, over every loaded version."""
        n = 0
        for m in [*self.current.values(), *self.draining]:
            if m.scheduler is not None:
                n += m.scheduler.active + m.scheduler.queued
            n += sum(1 for q in (m.batcher, m.stepper) if q is not None and q.busy)
        return n

    # ------------------------------------------------------------------ lookups

    @property
    def ready(self) -> bool:
        return all(r.served in self.current for r in self.refs)

    def not_ready_reason(self) -> str:
        missing = [r for r in self.refs if r.served not in self.current]
        parts = [f"{r.served} ({self.errors.get(r.served, {}).get('error', 'loading')})" for r in missing]
        return "models not loaded: " + "; ".join(parts)

    def get(self, name: str | None, kind: str) -> LoadedModel:
        """The model to use for a request: by name, or the first served one of ``kind`` (char,
        forecaster, panel)."""
        label = {"char": "char model", "panel": "panel forecaster"}.get(kind, "forecaster")
        if name is None:
            for r in self.refs:
                m = self.current.get(r.served)
                if m is not None and m.kind == kind:
                    return m
            if any(r.served not in self.current for r in self.refs):
                raise Overloaded("not_ready", f"no {label} is loaded yet ({self.not_ready_reason()})", 5, status=503)
            raise UnknownModel(f"this server has no {label}; it serves {self._listing()}")
        m = self.current.get(name)
        if m is None:
            if any(r.served == name for r in self.refs):
                raise Overloaded(
                    "not_ready", f"model {name!r} is not loaded yet ({self.not_ready_reason()})", 5, status=503
                )
            raise UnknownModel(f"unknown model {name!r}; this server serves {self._listing()}")
        if m.kind != kind:
            hint = {"panel": " (a panel model takes `series`)", "forecaster": " (a forecaster takes `context`)"}
            raise UnknownModel(
                f"model {name!r} is a {m.kind} model{hint.get(m.kind, '')}, not a {label}; this server serves "
                f"{self._listing()}"
            )
        return m

    def _listing(self) -> str:
        return ", ".join(f"{m.name} ({m.kind})" for m in self.current.values()) or "nothing yet"

    def describe(self) -> dict[str, Any]:
        self._reap()
        return {
            "models": [
                self.current[r.served].describe() | {"status": "serving"} for r in self.refs if r.served in self.current
            ],
            "draining": [m.describe() | {"status": "draining"} for m in self.draining],
            "errors": list(self.errors.values()),
            "configured": [
                {"name": r.served, "ref": r.target, "source": r.source, "watched": r.watched} for r in self.refs
            ],
            "poll_seconds": self.config.poll_seconds,
            "last_poll": self.last_poll,
            "registry": {**self.registry, "next_poll_in_s": self.poll_interval()},
        }
