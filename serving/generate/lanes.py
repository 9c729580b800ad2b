"""The decode batch as data: its lanes (:class:`DecodeBatch`) and the rows that move between them
(:class:`Row`). The scheduler decides which streams sit in which lane
(:mod:`rnnops.serving.generate.scheduler`); the executor computes a lane's next step
(:mod:`rnnops.serving.generate.executor`); this module only keeps each lane's rows in line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rnnops.serving.generate.runner import Pending

if TYPE_CHECKING:
    from rnnops.serving.generate.decode_graph import DecodeResult
    from rnnops.serving.runtime import RunResult, Runtime, State
from rnnops.serving.generate.stream import Stream

UNIFORM_BLOCK = 64  # uniforms drawn at once per stream (the same sequence as one at a time)
LANE_MIN_ROWS = 24  # a lane of fewer rows costs about as much per step as one of this many


class DecodeBatch:
    """One lane of the decode batch: its streams with their batched state, last tokens, sampling
    parameters and pre-drawn uniforms, in one object, so the rows can never fall out of line.

    ``pending`` is the lane's model call in flight (on the runner), if any: while it runs, the
    lane's rows must not change (its state is being computed), so streams join, leave and move
    between lanes only at the lane's turn, after its result was collected.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: Pending[RunResult | DecodeResult] | None = None
        self.clear()

    def clear(self) -> None:
        self.streams: list[Stream] = []
        self.state = self.runtime.zero_state(0)
        self.tokens = np.zeros(0, np.int64)
        self.uniforms = np.zeros((0, UNIFORM_BLOCK), np.float64)
        self.cursor = np.zeros(0, np.int64)
        self._params()

    def __len__(self) -> int:
        return len(self.streams)

    def _params(self) -> None:
        ps = [s.request.params for s in self.streams]
        self.temperature = np.array([p.temperature for p in ps], dtype=np.float64)
        self.top_k = np.array([p.top_k for p in ps], dtype=np.int64)
        self.top_p = np.array([p.top_p for p in ps], dtype=np.float64)
        self.logprobs = any(s.request.logprobs is not None for s in self.streams)

    def add(self, rows: list[Row]) -> None:
        """Rows joining the lane (after their prefill, or moved from another lane)."""
        if not rows:
            return
        self.streams.extend(r.stream for r in rows)
        self.state = self.runtime.concat([self.state, *(r.state for r in rows)])
        self.tokens = np.concatenate([self.tokens, np.array([r.token for r in rows], np.int64)])
        self.uniforms = np.concatenate([self.uniforms, np.stack([r.uniforms for r in rows])])
        self.cursor = np.concatenate([self.cursor, np.array([r.cursor for r in rows], np.int64)])
        self._params()

    def keep(self, rows: list[int]) -> None:
        """Shrink the lane to ``rows`` (positions, in order)."""
        if len(rows) == len(self.streams):
            return
        if not rows:
            self.clear()
            return
        self.streams = [self.streams[j] for j in rows]
        self.state = self.runtime.take(self.state, rows)
        self.tokens = self.tokens[rows]
        self.uniforms = self.uniforms[rows]
        self.cursor = self.cursor[rows]
        self._params()

    def remove(self, rows: list[int]) -> list[Row]:
        """Take ``rows`` out of the lane, with everything they carry (to join another lane)."""
        out = [
            Row(
                self.streams[j],
                self.runtime.take(self.state, [j]),
                int(self.tokens[j]),
                self.uniforms[j],
                int(self.cursor[j]),
            )
            for j in rows
        ]
        gone = set(rows)
        self.keep([j for j in range(len(self.streams)) if j not in gone])
        return out

    def draw(self, steps: int = 1) -> np.ndarray:
        """``steps`` uniforms per row, ``[rows, steps]``, each row's from its own stream's generator,
        in the generator's order (the same sequence as one at a time, whatever ``steps`` is).
        ``steps`` is at most :data:`UNIFORM_BLOCK`."""
        assert 1 <= steps <= UNIFORM_BLOCK, "a call takes at most a block of uniforms per row"
        for j in np.flatnonzero(self.cursor + steps > UNIFORM_BLOCK).tolist():  # not enough left: top up
            left = self.uniforms[j, self.cursor[j] :]
            self.uniforms[j] = np.concatenate([left, self.streams[j].rng.random(UNIFORM_BLOCK - len(left))])
            self.cursor[j] = 0
        if steps == 1:
            u = self.uniforms[np.arange(len(self.streams)), self.cursor][:, None]
        else:
            u = np.take_along_axis(self.uniforms, self.cursor[:, None] + np.arange(steps), axis=1)
        self.cursor += steps
        return u


@dataclass
class Row:
    """A stream on its way into a lane: its state (batch of one), last token and unused uniforms."""

    stream: Stream
    state: State
    token: int
    uniforms: np.ndarray
    cursor: int
