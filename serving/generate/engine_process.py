"""The engine process's side of :mod:`rnnops.serving.generate.engine`: load the model, run a
:class:`~rnnops.serving.generate.scheduler.StepScheduler`, take the worker's commands and send it
what the streams produced (the messages are :mod:`rnnops.serving.generate.wire`).

Started by :class:`~rnnops.serving.generate.engine.EngineClient` as
``python -m rnnops.serving.generate.engine_process FD SPEC_JSON``. It ignores SIGINT and SIGTERM
(the worker decides when it ends) and exits when its pipe closes or its worker is gone.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
from multiprocessing.connection import Connection

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate import wire
from rnnops.serving.generate.client import SchedulerMetrics
from rnnops.serving.generate.engine import FLUSH_S, EngineSpec
from rnnops.serving.generate.scheduler import StepScheduler
from rnnops.serving.generate.stream import Stream


class _Buffered(SchedulerMetrics):
    """The engine's scheduler metrics, kept until the next update carries them to the worker."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float, int]] = []
        self.rejections: list[str] = []

    def step(self, batch: int, seconds: float, chars: int) -> None:
        self.samples.append((batch, seconds, chars))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


class Engine:
    """The engine process's loop: commands in, scheduler steps, updates out."""

    def __init__(self, conn: Connection, spec: EngineSpec) -> None:
        from rnnops.serving.runtime import Runtime

        self.conn = conn
        self.runtime = Runtime(
            spec.path, providers=spec.providers, threads=spec.threads, iobinding=spec.iobinding, name=spec.name
        )
        self.metrics = _Buffered()
        self.touched: dict[int, Stream] = {}
        self.sched = StepScheduler(
            self.runtime,
            max_active=spec.max_active,
            max_queue=spec.max_queue + spec.max_active,
            queue_timeout=spec.queue_timeout,
            prefill_chunk=spec.prefill_chunk,
            metrics=self.metrics,
            name=spec.name,
            on_step=self._touched,
            lanes=spec.lanes,
            decode_steps=spec.decode_steps,
        )
        self.sched.executor.start()
        self.streams: dict[int, Stream] = {}  # by the worker's stream id
        self.wid: dict[int, int] = {}  # our stream id -> the worker's
        self.sent_logprobs: dict[int, int] = {}  # log-probabilities sent so far, per stream that asked
        self.sent_phase: dict[int, str] = {}  # the phase the worker last heard of, per stream past "queued"
        self.closing = False
        self.last_flush = time.monotonic()

    def _send(self, msg: wire.FromEngine) -> None:
        self.conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _touched(self, streams: list[Stream]) -> None:
        for s in streams:
            wid = self.wid.get(s.id)
            if wid is not None:
                self.touched[wid] = s

    def run(self) -> None:
        self._send(wire.Ready(os.getpid(), self.sched.executor.decode_path))
        parent = os.getppid()
        while True:
            wait = 0.0
            if self.sched.idle:
                self._flush()  # what the last steps produced (a stream's end) goes out before any wait
                if self.closing:
                    self._send(wire.Exit())
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

    def _command(self, msg: wire.ToEngine) -> bool:
        if isinstance(msg, wire.Submit):
            req = msg.request()
            s = Stream(req)
            self.wid[s.id] = msg.id
            self.streams[msg.id] = s
            try:
                self.sched.submit(req, s)  # its bound is above the worker's: the worker decides
            except Overloaded as exc:  # only if the two disagreed: answered like any end
                s.finish("queue_full" if exc.reason == "queue_full" else "error", exc.message)
                self._touched([s])
        elif isinstance(msg, wire.Cancel):
            cancelled = self.streams.get(msg.id)
            if cancelled is not None:
                cancelled.cancel()
        elif isinstance(msg, wire.Close):
            self.closing = True
            self.sched.close()
        elif isinstance(msg, wire.Stop):
            self.sched.stop()
            self._flush()
            self._send(wire.Exit())
            return False
        return True

    def _flush(self) -> None:
        self.last_flush = time.monotonic()
        m = self.metrics
        if not self.touched and not m.samples and not m.rejections:
            return
        u = wire.Update()
        for wid, s in self.touched.items():
            if s.request.logprobs is not None:
                k = self.sent_logprobs.get(wid, 0)
                u.logprobs[wid], self.sent_logprobs[wid] = s.logprobs[k:], len(s.logprobs)
            u.ids.append(wid)
            u.texts.append(s.drain())
            t = s.timing
            if s.done:
                assert s.finish_reason is not None, "a finished stream has its reason"
                u.ended[wid] = wire.Ended(s.finish_reason, s.error, t.admitted, t.first_char, t.finished)
                self.streams.pop(wid, None)
                self.wid.pop(s.id, None)
                self.sent_logprobs.pop(wid, None)
                self.sent_phase.pop(wid, None)
            elif s.phase != self.sent_phase.get(wid, "queued"):
                self.sent_phase[wid] = s.phase
                u.phases[wid] = wire.Phase(s.phase, t.admitted, t.first_char)
        self.touched = {}
        sched = self.sched
        u.steps, u.chars, u.lanes, u.last_error = sched.steps, sched.chars, sched.lane_sizes, sched.last_error
        u.samples, u.rejections, m.samples, m.rejections = m.samples, m.rejections, [], []
        self._send(u)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when the engine ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    try:
        engine = Engine(conn, EngineSpec(**json.loads(argv[1])))
    except Exception as exc:
        conn.send_bytes(pickle.dumps(wire.Failed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)))
        return
    try:
        engine.run()
    except (EOFError, OSError, BrokenPipeError):
        pass  # the worker is gone


if __name__ == "__main__":
    main()
