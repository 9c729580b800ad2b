"""The decode engine in a process of its own: a char model's step scheduler, away from the HTTP worker's GIL.

Why a process: the worker's event loop (HTTP parsing, SSE framing, middlewares) and the step
scheduler are both Python. In one process they take turns on one GIL, so every time a model
call returns, the scheduler waits for the event loop to let go before it can sample and start
the next call, and on a busy server the model sits idle for a good part of each step
(docs/serving.md has the measurement). vLLM splits its API server and its engine core into two
processes for the same reason. Here the engine process runs the :class:`StepScheduler` (with its
runner thread and lanes) and the model; the worker keeps the HTTP side and talks to it over a
pipe. The two then run on two cores at once.

What crosses the pipe is typed (:mod:`rnnops.serving.generate.wire`): submits, cancels, close and
stop one way; ready, then updates (per touched stream its phase, the text released since the last
update, stop strings already handled so a held-back tail never crosses, its timings, its end and
log-probabilities; and the step statistics for the metrics) the other way. The engine side, the
loop in the engine process, is :mod:`rnnops.serving.generate.engine_process`.

The worker side, :class:`EngineClient`, is a
:class:`~rnnops.serving.generate.client.GenerationClient` like the in-process scheduler: the
streams it hands out are ordinary :class:`Stream` objects, fed by a reader thread that applies
the updates (:meth:`Stream.receive`) and wakes the HTTP consumers through ``on_step``. Admission
(429 when the queue is full, :class:`~rnnops.serving.generate.client.Admission`) is decided in the
worker, from the streams it has submitted and not yet seen finish, so a request is refused before
any byte is sent, as before.

The engine ignores SIGINT and SIGTERM and lives in its own session: the worker decides when it
ends (its drain lets in-flight streams finish), and an engine whose worker died sees its pipe
close and exits.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate import wire
from rnnops.serving.generate.client import Admission, OnStep, SchedulerMetrics, no_one
from rnnops.serving.generate.stream import GenerationRequest, Stream

log = logging.getLogger("rnnops.serving")

FLUSH_S = 0.002  # the engine sends what its streams produced at most this often (and when idle)
READY_TIMEOUT_S = 300.0  # loading the model in the engine process


@dataclass(frozen=True)
class EngineSpec:
    """What the engine process needs to build its runtime and scheduler (plain values: it is
    passed on the command line as JSON)."""

    path: str
    providers: str = "cpu"
    threads: int = 1
    iobinding: str = "auto"
    name: str = "char"
    max_active: int = 256
    max_queue: int = 256
    queue_timeout: float = 30.0
    prefill_chunk: int = 256
    lanes: int = 2
    decode_steps: int = 0  # RNNOPS_DECODE_STEPS: the decode graph's steps per call (0: the Python sampler)


# ===================================================================================== worker side


class EngineClient:
    """A :class:`StepScheduler` in an engine process, as a :class:`GenerationClient` (the worker side)."""

    def __init__(
        self, spec: EngineSpec, metrics: SchedulerMetrics | None = None, on_step: OnStep | None = None
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_active = spec.max_active
        self.max_queue = spec.max_queue
        self.metrics = metrics or SchedulerMetrics()
        self.on_step = on_step or no_one
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # the stream table and counters (event loop vs reader thread)
        self._streams: dict[int, Stream] = {}
        self._queued: set[int] = set()
        self._active = 0
        self._closed = False
        self._ended = threading.Event()  # the engine process is gone (drained, stopped or died)
        self._reader: threading.Thread | None = None
        self.admission = Admission(spec.max_active, spec.max_queue, self.metrics)
        self.steps = 0
        self.chars = 0
        self.lanes: list[int] = []
        self.last_error: str | None = None
        self.pid: int | None = None
        self.decode = ""  # how the engine decodes (wire.Ready.decode)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EngineClient:
        """Start the engine process and wait until its model is loaded (blocking: call it off the
        event loop). Raises RuntimeError with the engine's own message when it cannot start."""
        ours, theirs = _socketpair()
        argv = [
            sys.executable,
            "-m",
            "rnnops.serving.generate.engine_process",
            str(theirs.fileno()),
            json.dumps(asdict(self.spec)),
        ]
        self._proc = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL
        )
        theirs.close()
        self._conn = ours
        self.pid = self._proc.pid
        try:
            if not ours.poll(READY_TIMEOUT_S):
                raise RuntimeError(
                    f"the engine process for {self.name} did not load its model in {READY_TIMEOUT_S:.0f}s"
                )
            msg = pickle.loads(ours.recv_bytes())
        except (EOFError, OSError):
            msg = wire.Failed(f"the engine process exited ({self._proc.wait(10)}) before loading the model")
        except BaseException:
            self._kill()
            raise
        if not isinstance(msg, wire.Ready):
            self._kill()
            raise RuntimeError(f"the engine process for {self.name} could not start: {getattr(msg, 'message', msg)}")
        self.decode = msg.decode
        self._ended.clear()  # running from here on (a restart refused submits until now: 503)
        self._reader = threading.Thread(target=self._read, name=f"rnnops-engine-{self.name}", daemon=True)
        self._reader.start()
        return self

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._ended.set()

    def close(self) -> None:
        """Take no new streams; the engine exits once the ones it has are finished (hot reload)."""
        with self._lock:
            self._closed = True
        self._send(wire.Close())

    def stop(self, timeout: float = 5.0) -> None:
        """End now: unfinished streams finish with ``shutdown``; the engine process exits."""
        with self._lock:
            self._closed = True
        self._send(wire.Stop())
        if not self._ended.wait(timeout):
            log.warning("engine %s did not stop within %gs; killing it", self.name, timeout)
            self._kill()
        if self._reader is not None:
            self._reader.join(timeout)
        self._end_all("shutdown", "the server is shutting down")

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._ended.is_set()

    # ------------------------------------------------------------------ the scheduler API

    @property
    def active(self) -> int:
        return self._active

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def idle(self) -> bool:
        return not self._streams

    def retry_after(self) -> int:
        return self.admission.retry_after(len(self._queued))

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation in the engine; raises :class:`Overloaded` when the queue is full,
        the version is draining, or the engine is down."""
        s = stream or Stream(request)
        s.scheduler = self
        with self._lock:
            if not self._closed and not self.running:
                raise Overloaded(
                    "engine_down",
                    f"the generation engine of {self.name} is not running ({self.last_error or 'it exited'}); retry",
                    5,
                    status=503,
                )
            self.admission.check(self._active, len(self._queued), self._closed)
            self._streams[s.id] = s
            self._queued.add(s.id)
            self.metrics.depth(self._active, len(self._queued))
        self._send(wire.Submit.of(s.id, request, s.seed))
        return s

    def cancel(self, stream: Stream) -> None:
        """A stream's client went away (:meth:`Stream.cancel`): the engine frees its slot."""
        self._send(wire.Cancel(stream.id))

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "batched",
            "engine": "process",
            "pid": self.pid,
            "running": self.running,
            "active": self.active,
            "queued": self.queued,
            "steps": self.steps,
            "chars": self.chars,
            "max_streams": self.max_active,
            "max_queue": self.max_queue,
            "lanes": self.lanes,
            "decode": self.decode,
            "decode_steps": self.spec.decode_steps,
            "closed": self._closed,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ the pipe

    def _send(self, msg: wire.ToEngine) -> None:
        conn = self._conn
        if conn is None or self._ended.is_set():
            return
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                conn.send_bytes(data)
        except (OSError, ValueError):  # the engine is gone: the reader reports it
            pass

    def _read(self) -> None:
        """The reader thread: apply the engine's updates until it exits."""
        conn = self._conn
        assert conn is not None, "start() connects before the reader runs"
        try:
            while True:
                msg = pickle.loads(conn.recv_bytes())
                if isinstance(msg, wire.Update):
                    self._apply(msg)
                elif isinstance(msg, wire.Exit):
                    break
        except (EOFError, OSError):
            code = self._proc.poll() if self._proc else None
            if not self._closed:
                self.last_error = f"the engine process exited unexpectedly (code {code})"
                log.error("engine %s: %s", self.name, self.last_error)
        finally:
            self._ended.set()
            if self._proc is not None:
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._kill()
            conn.close()
            self._end_all("error", self.last_error or "the generation engine stopped")
            if not self._closed:
                threading.Thread(target=self._restart, name=f"rnnops-engine-restart-{self.name}", daemon=True).start()

    def _restart(self) -> None:
        """A new engine after one died (its streams ended with an error; new ones get 503 until
        it is up), retried with backoff while this version is still served."""
        delay = 1.0
        while not self._closed:
            try:
                self.start()
                log.warning("engine %s: restarted (pid %s)", self.name, self.pid)
                self.last_error = None
                return
            except Exception as exc:
                self.last_error = f"restart failed: {exc}"
                log.error("engine %s: %s; next try in %gs", self.name, self.last_error, delay)
                time.sleep(delay)
                delay = min(30.0, 2 * delay)

    def _apply(self, u: wire.Update) -> None:
        touched = []
        finished = []
        streams = self._streams
        with self._lock:
            for sid, text in zip(u.ids, u.texts):
                s = streams.get(sid)
                if s is not None:
                    s.receive(text, u.logprobs.get(sid))
                    touched.append(s)
            # the worker's counters follow each stream: queued -> active -> gone
            for sid, p in u.phases.items():
                s = streams.get(sid)
                if s is None:
                    continue
                self._timings(s, p.admitted, p.first_char)
                if p.phase != "queued" and sid in self._queued:
                    self._queued.discard(sid)
                    self._active += 1
                s.phase = p.phase
            for sid, end in u.ended.items():
                s = streams.pop(sid, None)
                if s is None:
                    continue
                if sid in self._queued:
                    self._queued.discard(sid)
                else:
                    self._active -= 1
                self._timings(s, end.admitted, end.first_char)
                s.finish(end.reason, end.error)
                s.timing.finished = end.at or s.timing.finished
                finished.append(s)
            self.steps, self.chars, self.lanes = u.steps, u.chars, u.lanes
            if u.last_error:
                self.last_error = u.last_error
        for batch, seconds, n in u.samples:
            self.metrics.step(batch, seconds, n)
        for reason in u.rejections:
            self.metrics.rejected(reason)
        for s in finished:
            self.admission.finished(s)
        self.metrics.depth(self._active, len(self._queued))
        if touched:
            self.on_step(touched)

    @staticmethod
    def _timings(s: Stream, admitted: float | None, first_char: float | None) -> None:
        t = s.timing
        if t.admitted is None:
            t.admitted = admitted
        if t.first_char is None:
            t.first_char = first_char

    def _end_all(self, reason: str, message: str) -> None:
        with self._lock:
            left = list(self._streams.values())
            self._streams.clear()
            self._queued.clear()
            self._active = 0
        for s in left:
            s.finish(reason, message)
        if left:
            self.on_step(left)


def _socketpair() -> tuple[Connection, Connection]:
    import socket

    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())
