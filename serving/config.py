"""Serving settings from the environment (``RNNOPS_*``), with defaults that work unconfigured.

One frozen dataclass read once per worker; the CLI (``rnnops serve``) only sets these variables
before handing over to ``bentoml serve``. Every limit a request can hit is named here so that an
error message can say which variable raises it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from rnnops.errors import RnnopsError
from rnnops.util import available_cpus

DEFAULT_MODELS = "char-rnn@champion,forecaster@champion"
PRECISIONS = ("auto", "fp32", "int8")  # RNNOPS_PRECISION (see ServeConfig.precision)


# Any: the settings are of several types, each cast by its own function (ServeConfig's fields type them)
def _env(name: str, default: Any, cast: Callable[[str], Any]) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw.strip())
    except ValueError:
        raise RnnopsError(f"{name}={raw!r} is not a valid {cast.__name__}") from None


def _flag(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_flag.__name__ = "boolean (1/0)"


@dataclass(frozen=True)
class ServeConfig:
    # what to serve: comma-separated refs (name@alias, name/version, models:/..., path.onnx,
    # bentoml:tag), each optionally "served-name=ref"
    models: str = DEFAULT_MODELS
    poll_seconds: float = 10.0  # hot reload: how often aliases are checked (0 = never)
    reload_retry_s: float = 60.0  # a version that failed to load is tried again after this long
    poll_max_backoff_s: float = 60.0  # alias polls while the registry is unreachable: at most this far apart
    providers: str = "cpu"  # cpu | cuda (falls back to cpu with a warning)
    # which of a model's files runs: auto = the int8 file when its export kept one (rnnops export
    # makes it with fixed scales, so results stay batch-invariant and chunked == whole) and the
    # provider is the CPU, else fp32; fp32 = always model.onnx (the int8 file is not even
    # downloaded); int8 = the int8 file, and a model without one fails to load (asking for int8
    # means requiring it: auto already means "int8 when there is one")
    precision: str = "auto"
    iobinding: str = "auto"  # auto (on for cuda) | 1 | 0
    threads: int = 0  # ORT intra-op threads per session; 0 = see ort_threads
    workers: int = 1
    scheduler: str = "batched"  # batched | naive (one ORT call per request per char: benchmarks)
    # the decode batch in this many lanes, each one's model call overlapping the Python work on
    # another's result (generate/scheduler.py); 1 = one call per step, nothing overlapped. 1 by
    # default: on the 2-vCPU VM it was measured on, a hand-off between threads costs ~80 us of
    # wake-up latency, more than the overlap wins (docs/serving.md); try 2 on bare metal or CUDA
    decode_lanes: int = 1
    # decode steps per onnxruntime call, with sampling inside the call (generate/decode_graph.py,
    # built from the model file when it loads); 0 = today's path: one model step per call and the
    # sampling in numpy. A file the graph cannot wrap keeps the numpy path either way.
    decode_steps: int = 16
    # where a char model's scheduler runs: process = an engine process of its own per model version
    # (generate/engine.py: the model and the scheduler off this worker's GIL); thread = a thread of
    # this worker (one process, the two share the GIL: slower under load, simpler to debug)
    engine: str = "process"
    # generation limits
    max_streams: int = 256  # active streams per model (the decode batch)
    max_queue: int = 256  # streams waiting for a slot; beyond: 429
    queue_timeout_s: float = 30.0  # waiting longer: 503
    max_prompt_chars: int = 4096
    max_chars: int = 4096  # per request
    prefill_chunk: int = 256  # prompt characters per stream per step (long prompts don't stall others)
    openai_max_n: int = 16  # /v1/completions: choices per prompt (n)
    openai_max_prompts: int = 16  # /v1/completions: prompts per request
    coalesce_ms: float = 5.0  # SSE: characters gathered this long go out as one event (at least)
    sse_events_per_s: float = 2000.0  # SSE: total event rate a worker aims under (wider windows when busy)
    gil_switch_ms: float = 1.0  # sys.setswitchinterval: how long the scheduler thread may wait for the GIL
    trace_hot_paths: bool = False  # OpenTelemetry spans for /generate and /forecast too (see service.py)
    log_hot_paths: bool = False  # BentoML's access log line for them too (see service.py)
    # forecasts
    forecast_max_batch: int = 256
    forecast_max_windows: int = 1024  # per request
    max_context_rows: int = 10000  # rows per window or per session update
    max_sessions: int = 1024
    session_ttl_s: float = 600.0
    session_store: str = "memory"  # memory (this worker) | redis://host:6379/0 (shared by workers and replicas)
    # Redis store: an update whose write keeps finding the session changed by others' (saved
    # first) re-reads and re-applies for at most this long (503 session_busy beyond)
    session_lock_s: float = 30.0
    # the Open Inference Protocol (http/oip.py): the most elements one tensor's shape may claim,
    # checked before any of its data is read (a header cannot make the worker allocate more)
    oip_max_elements: int = 1 << 26
    # BentoML's traffic timeout (time to the first byte), a backstop behind request_deadline_s and
    # queue_timeout_s. Kept short because BentoML arms a timer per request for this long and never
    # cancels it: each holds its request's context (spans, futures) until it fires, so 600 s of
    # requests stayed in memory (the soak saw the heap grow for ten minutes).
    request_timeout_s: float = 150.0
    # reliability (http/limits.py, drain.py): request bodies at most this big (413 beyond, before
    # the body is read); a non-streaming request answered within this long (504 beyond); a stream
    # whose client stopped reading is cancelled after this long; SIGTERM lets in-flight work run
    # this long before ending it
    max_body_bytes: int = 8 << 20
    request_deadline_s: float = 120.0
    stall_s: float = 30.0
    # at most this many bytes unsent in a connection's kernel buffer (TCP_NOTSENT_LOWAT): what makes
    # a stalled client's send block soon (http/limits.py); 0 = the kernel's default (megabytes)
    send_buffer_bytes: int = 32768
    drain_s: float = 25.0
    # access (http/auth.py): keys (comma-separated or @FILE), per-key streams per worker (0 = no
    # bound), /metrics behind the keys too, allowed browser origins (comma-separated)
    api_keys: str = ""
    max_streams_per_key: int = 0
    metrics_auth: bool = False
    cors_origins: str = ""

    @property
    def ort_threads(self) -> int:
        """Intra-op threads per session: the worker's share of the CPUs minus one for its event
        loop (HTTP, SSE framing, sampling), at most 8 (a recurrent step is a chain of small
        matrix products: more threads mostly add synchronisation)."""
        if self.threads:
            return self.threads
        return min(8, max(1, available_cpus() // max(1, self.workers) - 1))

    @property
    def use_cuda(self) -> bool:
        return "cuda" in [p.strip().lower() for p in self.providers.split(",")]

    @classmethod
    def from_env(cls) -> ServeConfig:
        env: dict[str, tuple[str, Callable[[str], Any]]] = {
            "models": ("RNNOPS_MODELS", str),
            "poll_seconds": ("RNNOPS_POLL_SECONDS", float),
            "reload_retry_s": ("RNNOPS_RELOAD_RETRY_S", float),
            "poll_max_backoff_s": ("RNNOPS_POLL_MAX_BACKOFF_S", float),
            "providers": ("RNNOPS_PROVIDERS", str),
            "precision": ("RNNOPS_PRECISION", str),
            "iobinding": ("RNNOPS_IOBINDING", str),
            "threads": ("RNNOPS_THREADS", int),
            "workers": ("RNNOPS_WORKERS", int),
            "scheduler": ("RNNOPS_SCHEDULER", str),
            "decode_lanes": ("RNNOPS_DECODE_LANES", int),
            "decode_steps": ("RNNOPS_DECODE_STEPS", int),
            "engine": ("RNNOPS_ENGINE", str),
            "max_streams": ("RNNOPS_MAX_STREAMS", int),
            "max_queue": ("RNNOPS_MAX_QUEUE", int),
            "queue_timeout_s": ("RNNOPS_QUEUE_TIMEOUT", float),
            "max_prompt_chars": ("RNNOPS_MAX_PROMPT_CHARS", int),
            "max_chars": ("RNNOPS_MAX_CHARS", int),
            "prefill_chunk": ("RNNOPS_PREFILL_CHUNK", int),
            "openai_max_n": ("RNNOPS_OPENAI_MAX_N", int),
            "openai_max_prompts": ("RNNOPS_OPENAI_MAX_PROMPTS", int),
            "coalesce_ms": ("RNNOPS_COALESCE_MS", float),
            "sse_events_per_s": ("RNNOPS_SSE_EVENTS_PER_S", float),
            "gil_switch_ms": ("RNNOPS_GIL_SWITCH_MS", float),
            "trace_hot_paths": ("RNNOPS_TRACE_HOT_PATHS", _flag),
            "log_hot_paths": ("RNNOPS_LOG_HOT_PATHS", _flag),
            "forecast_max_batch": ("RNNOPS_FORECAST_MAX_BATCH", int),
            "forecast_max_windows": ("RNNOPS_FORECAST_MAX_WINDOWS", int),
            "max_context_rows": ("RNNOPS_MAX_CONTEXT_ROWS", int),
            "max_sessions": ("RNNOPS_MAX_SESSIONS", int),
            "session_ttl_s": ("RNNOPS_SESSION_TTL", float),
            "session_store": ("RNNOPS_SESSION_STORE", str),
            "session_lock_s": ("RNNOPS_SESSION_LOCK_S", float),
            "oip_max_elements": ("RNNOPS_OIP_MAX_ELEMENTS", int),
            "request_timeout_s": ("RNNOPS_REQUEST_TIMEOUT", float),
            "max_body_bytes": ("RNNOPS_MAX_BODY_BYTES", int),
            "request_deadline_s": ("RNNOPS_REQUEST_DEADLINE_S", float),
            "stall_s": ("RNNOPS_STALL_S", float),
            "send_buffer_bytes": ("RNNOPS_SEND_BUFFER_BYTES", int),
            "drain_s": ("RNNOPS_DRAIN_S", float),
            "api_keys": ("RNNOPS_API_KEYS", str),
            "max_streams_per_key": ("RNNOPS_MAX_STREAMS_PER_KEY", int),
            "metrics_auth": ("RNNOPS_METRICS_AUTH", _flag),
            "cors_origins": ("RNNOPS_CORS_ORIGINS", str),
        }
        defaults = {f.name: f.default for f in fields(cls) if f.name in env}
        values = {k: _env(var, defaults[k], cast) for k, (var, cast) in env.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.scheduler not in ("batched", "naive"):
            raise RnnopsError(f"RNNOPS_SCHEDULER must be batched or naive, not {self.scheduler!r}")
        if self.engine not in ("process", "thread"):
            raise RnnopsError(f"RNNOPS_ENGINE must be process or thread, not {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise RnnopsError(f"RNNOPS_PRECISION must be {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.iobinding not in ("auto", "1", "0"):
            raise RnnopsError(f"RNNOPS_IOBINDING must be auto, 1 or 0, not {self.iobinding!r}")
        unknown = [p for p in self.providers.split(",") if p.strip().lower() not in ("cpu", "cuda")]
        if unknown:
            raise RnnopsError(f"RNNOPS_PROVIDERS: unknown provider(s) {unknown}; use cpu or cuda")
        for name in (
            "max_streams",
            "max_prompt_chars",
            "max_chars",
            "prefill_chunk",
            "forecast_max_batch",
            "forecast_max_windows",
            "max_context_rows",
            "max_sessions",
            "workers",
            "decode_lanes",
            "openai_max_n",
            "openai_max_prompts",
            "oip_max_elements",
        ):
            if getattr(self, name) < 1:
                raise RnnopsError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.decode_steps <= 64:
            raise RnnopsError(f"RNNOPS_DECODE_STEPS must be 0 (numpy sampling) to 64, not {self.decode_steps}")
        if self.max_queue < 0:
            raise RnnopsError("RNNOPS_MAX_QUEUE must be 0 or more")
        if self.session_store != "memory" and not self.session_store.startswith(("redis://", "rediss://", "unix://")):
            raise RnnopsError(
                f"RNNOPS_SESSION_STORE must be memory or a Redis URL (redis://host:6379/0), not {self.session_store!r}"
            )
        for name, var in (
            ("request_deadline_s", "RNNOPS_REQUEST_DEADLINE_S"),
            ("stall_s", "RNNOPS_STALL_S"),
            ("drain_s", "RNNOPS_DRAIN_S"),
            ("session_lock_s", "RNNOPS_SESSION_LOCK_S"),
        ):
            if getattr(self, name) <= 0:
                raise RnnopsError(f"{var} must be more than 0 seconds, not {getattr(self, name)}")
        if self.send_buffer_bytes < 0:
            raise RnnopsError(
                f"RNNOPS_SEND_BUFFER_BYTES must be 0 (the kernel's default) or more, not {self.send_buffer_bytes}"
            )
        if self.max_body_bytes < 1024:
            raise RnnopsError(f"RNNOPS_MAX_BODY_BYTES must be at least 1024, not {self.max_body_bytes}")
        if self.max_streams_per_key < 0:
            raise RnnopsError("RNNOPS_MAX_STREAMS_PER_KEY must be 0 (no bound) or more")
        if self.api_keys:
            from rnnops.serving.http.auth import load_keys

            load_keys(self.api_keys)  # a missing or empty key file is one line now, not a worker traceback
