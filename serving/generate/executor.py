"""Execution: the model calls and the sampling of a step, for whatever the scheduler decided.

The scheduler (:mod:`rnnops.serving.generate.scheduler`) decides who is admitted, who prefills
which chunk and which lane each stream decodes in; this module runs those decisions and hands
back what came out (:class:`DecodeOutput`, :class:`PrefillOutput`); the scheduler then updates its
streams from the output (delivers characters, retires streams). vLLM's engine core has the same
three parts (scheduler, executor, update from output).

A decode step runs one of two ways. With the decode graph (:mod:`rnnops.serving.generate.decode_graph`,
``RNNOPS_DECODE_STEPS`` >= 1, the default), sampling is inside the model call and one call runs
up to ``RNNOPS_DECODE_STEPS`` steps (the scheduler picks how many, :meth:`StepScheduler._steps`):
the lane's uniforms for those steps are drawn at launch and the call returns the characters.
Without it (``RNNOPS_DECODE_STEPS=0``, a fake runtime in tests, or a file the graph cannot wrap,
which keeps working through this path), the call is the model at T=1 and the sampling runs here
in numpy (:mod:`rnnops.serving.generate.sampling`) on its result. Both give the scheduler the same
:class:`DecodeOutput`, and the same seed gives the same text through either (docs/serving.md).

Model calls go through a :class:`~rnnops.serving.generate.runner.Runner`: on its thread while
another lane's call may still be running there (so the two stay in order and the scheduler's
thread samples meanwhile), else at once on the calling thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnops.serving.generate import decode_graph
from rnnops.serving.generate.decode_graph import DecodeResult
from rnnops.serving.generate.lanes import UNIFORM_BLOCK, DecodeBatch
from rnnops.serving.generate.runner import Pending, Runner
from rnnops.serving.generate.sampling import sample_batch
from rnnops.serving.generate.stream import Stream

if TYPE_CHECKING:
    from rnnops.serving.runtime import Runtime, State


@dataclass
class DecodeOutput:
    """One lane's call: the characters sampled per step and row, and (when a stream in the lane
    asked for log-probabilities) the logits each was drawn from."""

    ids: np.ndarray  # int64 [steps, rows]
    logits: np.ndarray | None  # float32 [steps, rows, vocab], or None


@dataclass
class PrefillOutput:
    """A prefill chunk's result for one stream: its state after the chunk, and the logits of the
    prompt's last character when the chunk ended the prompt (else None)."""

    stream: Stream
    chars: int  # prompt characters this chunk advanced
    state: State
    logits: np.ndarray | None


class Executor:
    """Runs a char model's decode and prefill calls (see the module docstring)."""

    def __init__(self, runtime: Runtime, name: str, decode_steps: int = 0) -> None:
        self.runtime = runtime
        self.runner = Runner(f"rnnops-runner-{name}")
        # at most this many steps per decode call (RNNOPS_DECODE_STEPS; 0: the Python sampler)
        self.decode_steps = min(int(decode_steps), UNIFORM_BLOCK)
        self.graph: decode_graph.DecodeGraph | None = None
        # seconds per decode step of the graph's recent calls (a moving average; None: no call yet),
        # so the scheduler can keep a call within its time budget
        self.step_s: float | None = None
        self.decode_path = "python: RNNOPS_DECODE_STEPS=0 (sampling in numpy, one step per call)"
        if self.decode_steps > 0:
            self.graph, why = decode_graph.build(runtime)
            self.decode_path = f"graph: {why}" if self.graph else f"python: {why}"

    @property
    def max_steps(self) -> int:
        """The most decode steps one call may run (1 without the decode graph)."""
        return self.decode_steps if self.graph is not None else 1

    def _call(self, lanes: list[DecodeBatch], fn: Callable[..., Any], *args: Any) -> Pending[Any]:
        """A model call: on the runner while another lane's call may be running there, else now."""
        if any(lane.pending is not None and not lane.pending.done for lane in lanes):
            return self.runner.submit(fn, *args)
        return self.runner.run_now(fn, *args)

    # ------------------------------------------------------------------ decode

    def launch(self, lane: DecodeBatch, lanes: list[DecodeBatch], steps: int = 1) -> None:
        """Start the lane's next call: ``steps`` steps through the decode graph (its uniforms drawn
        now), or one model step at T=1 whose sampling :meth:`collect` does."""
        if self.graph is None:
            lane.pending = self._call(lanes, self.runtime.run, lane.tokens[:, None], lane.state, "last")
            return
        args = (lane.tokens, lane.state, lane.temperature, lane.top_k, lane.top_p, lane.draw(steps), lane.logprobs)
        lane.pending = self._call(lanes, self._decode, *args)

    def _decode(self, *args: Any) -> DecodeResult:
        """The decode graph's call, timed per step (on whichever thread runs it)."""
        assert self.graph is not None, "launch() calls it only with a graph"
        t0 = time.perf_counter()
        r = self.graph.run(*args)
        per_step = (time.perf_counter() - t0) / r.tokens.shape[0]
        self.step_s = per_step if self.step_s is None else 0.8 * self.step_s + 0.2 * per_step
        return r

    def collect(self, lane: DecodeBatch) -> DecodeOutput:
        """The lane's call in flight: wait for it (sample each row with its own uniforms when the
        call was the bare model), and advance the lane's state and last tokens. Raises what the
        model call raised."""
        pending, lane.pending = lane.pending, None
        assert pending is not None, "collect() follows launch()"
        r = pending.result()
        if isinstance(r, DecodeResult):
            lane.state, lane.tokens = r.state, r.tokens[-1]
            return DecodeOutput(r.tokens, r.logits)
        ids = sample_batch(r.output, lane.temperature, lane.top_k, lane.top_p, lane.draw(1)[:, 0])
        lane.state, lane.tokens = r.state, ids
        return DecodeOutput(ids[None], r.output[None])

    # ------------------------------------------------------------------ prefill

    def prefill(self, chunks: dict[int, list[tuple[Stream, int]]], lanes: list[DecodeBatch]) -> list[PrefillOutput]:
        """One call per chunk length (``{length: [(stream, prompt cursor), ...]}``), no padding, so
        a stream's state is exactly the one it gets alone. All go to the runner at once (after the
        lanes' calls), then are collected in order. Raises what a call raised."""
        rt = self.runtime
        calls = []
        for b, group in chunks.items():
            state = rt.concat([s.state if s.state is not None else rt.zero_state(1) for s, _ in group])
            toks = np.stack([s.request.prompt_ids[c : c + b] for s, c in group])
            calls.append((b, group, self._call(lanes, rt.run, toks, state, "last")))
        out = []
        for b, group, call in calls:
            r = call.result()
            logits, state = r.output, r.state
            for j, (s, c) in enumerate(group):
                last = c + b == len(s.request.prompt_ids)
                out.append(
                    PrefillOutput(s, b, rt.take(state, [j]) if len(group) > 1 else state, logits[j] if last else None)
                )
        return out

    def first_tokens(self, streams: list[Stream], logits: list[np.ndarray]) -> np.ndarray:
        """Sample the first character of streams whose prompt is done, from the prefill logits."""
        ps = [s.request.params for s in streams]
        u = np.array([s.rng.random() for s in streams])
        return sample_batch(
            np.stack(logits),
            np.array([p.temperature for p in ps]),
            np.array([p.top_k for p in ps]),
            np.array([p.top_p for p in ps]),
            u,
        )

    def start(self) -> None:
        self.runner.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.runner.stop(timeout)
