"""Execution: the model calls and the sampling of a step, for whatever the scheduler decided.

The scheduler (:mod:`rnnops.serving.generate.scheduler`) decides who is admitted, who prefills
which chunk and which lane each stream decodes in; this module runs those decisions and hands
back what came out (:class:`DecodeOutput`, :class:`PrefillOutput`); the scheduler then updates its
streams from the output (delivers characters, retires streams). vLLM's engine core has the same
three parts (scheduler, executor, update from output).

This is the seam for moving more of a step into the model: sampling, or several decode steps in
one onnxruntime call, would change :meth:`Executor.launch` / :meth:`Executor.collect` and leave the
scheduler's decisions as they are (issue 27).

Model calls go through a :class:`~rnnops.serving.generate.runner.Runner`: on its thread while
another lane's call may still be running there (so the two stay in order and the scheduler's
thread samples meanwhile), else at once on the calling thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnops.serving.generate.lanes import DecodeBatch
from rnnops.serving.generate.runner import Pending, Runner
from rnnops.serving.generate.sampling import sample_batch
from rnnops.serving.generate.stream import Stream

if TYPE_CHECKING:
    from rnnops.serving.runtime import RunResult, Runtime, State


@dataclass
class DecodeOutput:
    """One lane's step: the sampled token per row and the logits it was drawn from."""

    ids: np.ndarray  # int64 [rows]
    logits: np.ndarray  # [rows, vocab]


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

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.runner = Runner(f"rnnops-runner-{name}")

    def _call(self, lanes: list[DecodeBatch], fn: Callable[..., RunResult], *args: Any) -> Pending[RunResult]:
        """A model call: on the runner while another lane's call may be running there, else now."""
        if any(lane.pending is not None and not lane.pending.done for lane in lanes):
            return self.runner.submit(fn, *args)
        return self.runner.run_now(fn, *args)

    # ------------------------------------------------------------------ decode

    def launch(self, lane: DecodeBatch, lanes: list[DecodeBatch]) -> None:
        """Start the lane's next step (T=1 for every row, with the state each carries)."""
        lane.pending = self._call(lanes, self.runtime.run, lane.tokens[:, None], lane.state, "last")

    def collect(self, lane: DecodeBatch) -> DecodeOutput:
        """The lane's step in flight: wait for it, sample each row with its own uniforms, and
        advance the lane's state and last tokens. Raises what the model call raised."""
        pending, lane.pending = lane.pending, None
        assert pending is not None, "collect() follows launch()"
        r = pending.result()
        ids = sample_batch(r.output, lane.temperature, lane.top_k, lane.top_p, lane.draw())
        lane.state, lane.tokens = r.state, ids
        return DecodeOutput(ids, r.output)

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
