"""The decode engine in a process of its own: a char model's step scheduler, away from the HTTP worker's GIL.

Why a process: the worker's event loop (HTTP parsing, SSE framing, middlewares) and the step
scheduler are both Python. In one process they take turns on one GIL, so every time a model
call returns, the scheduler waits for the event loop to let go before it can sample and start
the next call, and on a busy server the model sits idle for a good part of each step
(docs/serving.md has the measurement). vLLM splits its API server and its engine core into two
processes for the same reason. Here the engine process runs the :class:`StepScheduler` (with its
runner thread and lanes) and the model; the worker keeps the HTTP side and talks to it over a
pipe. The two then run on two cores at once.

What crosses the pipe (pickled tuples, :mod:`multiprocessing.connection` framing):

- worker -> engine: ``("submit", id, prompt ids, max_chars, sampling, seed, stop, logprobs)``,
  ``("cancel", id)``, ``("close",)`` (finish what you have, then exit: hot reload),
  ``("stop",)`` (end now: shutdown);
- engine -> worker: ``("ready", pid)`` once the model is loaded, then ``("update", rows, stats)``
  at most every :data:`FLUSH_S` while streams run: per touched stream its phase, the text
  released since the last update (stop strings already handled: a held-back tail never
  crosses), its end, its timings and log-probabilities; and the step statistics for the metrics.

The worker side, :class:`EngineClient`, looks like a :class:`StepScheduler` to the HTTP layer
(``submit``, ``retry_after``, ``active``, ``queued``, ``describe``, ``close``, ``stop``): the
streams it hands out are ordinary :class:`Stream` objects, fed by a reader thread that applies
the updates and wakes the HTTP consumers through ``on_step``. Admission (429 when the queue is
full) is decided in the worker, from the streams it has submitted and not yet seen finish, so a
request is refused before any byte is sent, as before.

The engine ignores SIGINT and SIGTERM and lives in its own session: the worker decides when it
ends (its drain lets in-flight streams finish), and an engine whose worker died sees its pipe
close and exits.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

import numpy as np

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.scheduler import SchedulerMetrics, StepScheduler
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


# ===================================================================================== worker side


class EngineClient:
    """A :class:`StepScheduler` in an engine process, as the HTTP layer sees a scheduler."""

    def __init__(self, spec: EngineSpec, metrics: SchedulerMetrics | None = None, on_step=None):
        self.spec = spec
        self.name = spec.name
        self.max_active = spec.max_active
        self.max_queue = spec.max_queue
        self.metrics = metrics or SchedulerMetrics()
        self.on_step = on_step or (lambda streams: None)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # the stream table and counters (event loop vs reader thread)
        self._streams: dict[int, Stream] = {}
        self._queued: set[int] = set()
        self._active = 0
        self._closed = False
        self._ended = threading.Event()  # the engine process is gone (drained, stopped or died)
        self._reader: threading.Thread | None = None
        self._avg_stream_s = 1.0
        self.steps = 0
        self.chars = 0
        self.lanes: list[int] = []
        self._last_error: str | None = None
        self.pid: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "EngineClient":
        """Start the engine process and wait until its model is loaded (blocking: call it off the
        event loop). Raises RuntimeError with the engine's own message when it cannot start."""
        import json

        ours, theirs = _socketpair()
        argv = [sys.executable, "-m", "rnnops.serving.generate.engine", str(theirs.fileno()), json.dumps(asdict(self.spec))]
        self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), start_new_session=True,
                                      stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = ours
        self.pid = self._proc.pid
        try:
            if not ours.poll(READY_TIMEOUT_S):
                raise RuntimeError(f"the engine process for {self.name} did not load its model in {READY_TIMEOUT_S:.0f}s")
            msg = pickle.loads(ours.recv_bytes())
        except (EOFError, OSError):
            msg = ("failed", f"the engine process exited ({self._proc.wait(10)}) before loading the model")
        except BaseException:
            self._kill()
            raise
        if msg[0] != "ready":
            self._kill()
            raise RuntimeError(f"the engine process for {self.name} could not start: {msg[1]}")
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
        self._send(("close",))

    def stop(self, timeout: float = 5.0) -> None:
        """End now: unfinished streams finish with ``shutdown``; the engine process exits."""
        with self._lock:
            self._closed = True
        self._send(("stop",))
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
        est = self._avg_stream_s * (len(self._queued) + 1) / max(1, self.max_active)
        return int(min(60, max(1, math.ceil(est))))

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation in the engine; raises :class:`Overloaded` when the queue is full,
        the version is draining, or the engine is down."""
        s = stream or Stream(request)
        s.scheduler = self
        with self._lock:
            if self._closed:
                raise Overloaded("draining", "this model version is being replaced; retry", 1, status=503)
            if not self.running:
                raise Overloaded("engine_down", f"the generation engine of {self.name} is not running "
                                 f"({self._last_error or 'it exited'}); retry", 5, status=503)
            free = self.max_active - self._active
            if len(self._queued) >= self.max_queue + max(0, free):
                self.metrics.rejected("queue_full")
                raise Overloaded(
                    "queue_full",
                    f"{self._active} streams are generating and {len(self._queued)} are waiting (limits "
                    f"RNNOPS_MAX_STREAMS={self.max_active}, RNNOPS_MAX_QUEUE={self.max_queue}); retry later",
                    self.retry_after(), status=429)
            self._streams[s.id] = s
            self._queued.add(s.id)
            self.metrics.depth(self._active, len(self._queued))
        r, p = request, request.params
        self._send(("submit", s.id, np.asarray(r.prompt_ids, np.int64).tobytes(), r.max_chars,
                    (p.temperature, p.top_k, p.top_p), s.seed, tuple(r.stop), r.logprobs))
        return s

    def cancelled(self, stream: Stream) -> None:
        """A stream's client went away (:meth:`Stream.cancel`): the engine frees its slot."""
        self._send(("cancel", stream.id))

    def wakeup(self) -> None:  # the in-process scheduler's hook; nothing to wake here
        pass

    def describe(self) -> dict:
        return {"mode": "batched", "engine": "process", "pid": self.pid, "running": self.running,
                "active": self.active, "queued": self.queued, "steps": self.steps, "chars": self.chars,
                "max_streams": self.max_active, "max_queue": self.max_queue, "lanes": self.lanes,
                "closed": self._closed, "last_error": self._last_error}

    # ------------------------------------------------------------------ the pipe

    def _send(self, msg: tuple) -> None:
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
        try:
            while True:
                msg = pickle.loads(conn.recv_bytes())
                if msg[0] == "update":
                    self._apply(msg[1], msg[2])
                elif msg[0] == "exit":
                    break
        except (EOFError, OSError):
            code = self._proc.poll() if self._proc else None
            if not self._closed:
                self._last_error = f"the engine process exited unexpectedly (code {code})"
                log.error("engine %s: %s", self.name, self._last_error)
        finally:
            self._ended.set()
            if self._proc is not None:
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._kill()
            conn.close()
            self._end_all("error", self._last_error or "the generation engine stopped")
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
                self._last_error = None
                return
            except Exception as exc:
                self._last_error = f"restart failed: {exc}"
                log.error("engine %s: %s; next try in %gs", self.name, self._last_error, delay)
                time.sleep(delay)
                delay = min(30.0, 2 * delay)

    def _apply(self, rows: list, stats: tuple) -> None:
        touched = []
        finished = []
        with self._lock:
            for sid, phase, text, reason, error, admitted, first_char, end, logprobs in rows:
                s = self._streams.get(sid)
                if s is None:
                    continue
                # log-probabilities first: a consumer on the event loop reads them for the text it
                # drains (OpenAI `logprobs`), so they must be there before the text is
                if logprobs:
                    s.logprobs.extend(logprobs)
                if text:
                    s.generated.extend(text)
                    s._out.extend(text)
                    s._released += len(text)
                t = s.timing
                if admitted is not None and t.admitted is None:
                    t.admitted = admitted
                if first_char is not None and t.first_char is None:
                    t.first_char = first_char
                # the worker's counters follow each stream: queued -> active -> gone
                was = "queued" if sid in self._queued else "active"
                now = "gone" if reason is not None else ("queued" if phase == "queued" else "active")
                if was != now:
                    if was == "queued":
                        self._queued.discard(sid)
                    else:
                        self._active -= 1
                    if now == "active":
                        self._active += 1
                if reason is not None:
                    s.finish(reason, error)
                    t.finished = end or t.finished
                    del self._streams[sid]
                    finished.append(s)
                elif phase != s.phase:
                    s.phase = phase
                touched.append(s)
            steps, chars, lanes, last_error, samples, rejected = stats
            self.steps, self.chars, self.lanes = steps, chars, lanes
            if last_error:
                self._last_error = last_error
        for batch, seconds, n in samples:
            self.metrics.step(batch, seconds, n)
        for reason in rejected:
            self.metrics.rejected(reason)
        for s in finished:
            if s.timing.admitted is not None and s.timing.finished is not None:
                self._avg_stream_s = 0.9 * self._avg_stream_s + 0.1 * (s.timing.finished - s.timing.admitted)
            self.metrics.finished(s)
        self.metrics.depth(self._active, len(self._queued))
        if touched:
            self.on_step(touched)

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


# ===================================================================================== engine side


class _Buffered(SchedulerMetrics):
    """The engine's scheduler metrics, kept until the next update carries them to the worker."""

    def __init__(self):
        self.samples: list[tuple[int, float, int]] = []
        self.rejections: list[str] = []

    def step(self, batch: int, seconds: float, chars: int) -> None:
        self.samples.append((batch, seconds, chars))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


class _Engine:
    """The engine process's loop: commands in, scheduler steps, updates out."""

    def __init__(self, conn: Connection, spec: EngineSpec):
        from rnnops.serving.runtime import Runtime

        self.conn = conn
        self.runtime = Runtime(spec.path, providers=spec.providers, threads=spec.threads, iobinding=spec.iobinding,
                               name=spec.name)
        self.metrics = _Buffered()
        self.touched: dict[int, Stream] = {}
        self.sched = StepScheduler(self.runtime, max_active=spec.max_active, max_queue=spec.max_queue + spec.max_active,
                                   queue_timeout=spec.queue_timeout, prefill_chunk=spec.prefill_chunk,
                                   metrics=self.metrics, name=spec.name, on_step=self._touched, lanes=spec.lanes)
        self.sched.runner.start()
        self.streams: dict[int, Stream] = {}  # by the worker's stream id
        self.sent_logprobs: dict[int, int] = {}
        self.closing = False
        self.last_flush = time.monotonic()

    def _touched(self, streams: list[Stream]) -> None:
        for s in streams:
            self.touched[s.wid] = s

    def run(self) -> None:
        self.conn.send_bytes(pickle.dumps(("ready", os.getpid())))
        parent = os.getppid()
        while True:
            wait = 0.0
            if self.sched.idle:
                self._flush()  # what the last steps produced (a stream's end) goes out before any wait
                if self.closing:
                    self.conn.send_bytes(pickle.dumps(("exit",)))
                    return
                if os.getppid() != parent:  # the worker died without closing the pipe
                    return
                wait = 0.5  # nothing to step: sleep until a command comes
            while self.conn.poll(wait):
                if not self._command(pickle.loads(self.conn.recv_bytes())):
                    return
                wait = 0.0
            if self.sched.idle:
                continue
            self.sched.step()
            if time.monotonic() - self.last_flush >= FLUSH_S:
                self._flush()

    def _command(self, msg: tuple) -> bool:
        kind = msg[0]
        if kind == "submit":
            _, wid, ids, max_chars, (temperature, top_k, top_p), seed, stop, logprobs = msg
            req = GenerationRequest(np.frombuffer(ids, np.int64).copy(), max_chars,
                                    SamplingParams(temperature, top_k, top_p), seed, tuple(stop), logprobs)
            s = Stream(req)
            s.wid = wid
            self.streams[wid] = s
            try:
                self.sched.submit(req, s)  # its bound is above the worker's: the worker decides
            except Overloaded as exc:  # only if the two disagreed: answered like any end
                s.finish("queue_full" if exc.reason == "queue_full" else "error", exc.message)
                self._touched([s])
        elif kind == "cancel":
            s = self.streams.get(msg[1])
            if s is not None:
                s.cancel()
        elif kind == "close":
            self.closing = True
            self.sched.close()
        elif kind == "stop":
            self.sched.stop()
            self._flush()
            self.conn.send_bytes(pickle.dumps(("exit",)))
            return False
        return True

    def _flush(self) -> None:
        self.last_flush = time.monotonic()
        m = self.metrics
        if not self.touched and not m.samples and not m.rejections:
            return
        rows = []
        for wid, s in self.touched.items():
            lp = None
            if s.request.logprobs is not None:
                k = self.sent_logprobs.get(wid, 0)
                lp, self.sent_logprobs[wid] = s.logprobs[k:], len(s.logprobs)
            t = s.timing
            rows.append((wid, s.phase, s.drain(), s.finish_reason, s.error, t.admitted, t.first_char, t.finished, lp))
            if s.done:
                self.streams.pop(wid, None)
                self.sent_logprobs.pop(wid, None)
        self.touched = {}
        sched = self.sched
        stats = (sched.steps, sched.chars, [len(lane) for lane in sched._lanes], sched._last_error, m.samples,
                 m.rejections)
        m.samples, m.rejections = [], []
        self.conn.send_bytes(pickle.dumps(("update", rows, stats), protocol=pickle.HIGHEST_PROTOCOL))


def main(argv: list[str] | None = None) -> None:
    import json

    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when the engine ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    try:
        engine = _Engine(conn, EngineSpec(**json.loads(argv[1])))
    except Exception as exc:
        conn.send_bytes(pickle.dumps(("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)))
        return
    try:
        engine.run()
    except (EOFError, OSError, BrokenPipeError):
        pass  # the worker is gone


if __name__ == "__main__":
    main()
