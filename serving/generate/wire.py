"""The messages between an HTTP worker and its engine process, as types (pickled over a pipe with
:mod:`multiprocessing.connection` framing; both ends are this package, never a client's bytes).

- worker -> engine: :class:`Submit`, :class:`Cancel`, :class:`Close` (finish what you have, then
  exit: hot reload), :class:`Stop` (end now: shutdown);
- engine -> worker: :class:`Ready` once the model is loaded (or :class:`Failed` with why not),
  then an :class:`Update` at most every ``FLUSH_S`` while streams run, and :class:`Exit` last.

An update is kept in columns, rather than one object per stream: it crosses the pipe up to 500
times a second, and pickling 64 small objects costs about forty times what 64 entries of a list
of strings do (measured: 600 us against 16 us). Only the text goes out for every stream touched;
a phase change and an end only when they happen, so a 64-stream update is about 450 bytes (the
positional tuples before were 2 kB) and the worker applies it in about three quarters of the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.stream import GenerationRequest, Logprob


@dataclass(frozen=True)
class Submit:
    id: int  # the worker's stream id
    prompt_ids: bytes  # int64 token ids
    max_chars: int
    params: SamplingParams
    seed: int
    stop: tuple[str, ...]
    logprobs: int | None

    @classmethod
    def of(cls, sid: int, r: GenerationRequest, seed: int) -> Submit:
        return cls(
            sid, np.asarray(r.prompt_ids, np.int64).tobytes(), r.max_chars, r.params, seed, tuple(r.stop), r.logprobs
        )

    def request(self) -> GenerationRequest:
        return GenerationRequest(
            np.frombuffer(self.prompt_ids, np.int64).copy(),
            self.max_chars,
            self.params,
            self.seed,
            self.stop,
            self.logprobs,
        )


@dataclass(frozen=True)
class Cancel:
    id: int


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    pid: int
    decode: str = ""  # how the engine decodes: its executor's decode_path (the graph, or Python and why)


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True)
class Exit:
    pass


@dataclass(frozen=True)
class Phase:
    """A stream moved on (queued -> prefill -> decode), with the timings it has by then (in the
    engine's clock, which is the worker's: ``time.monotonic``)."""

    phase: str
    admitted: float | None
    first_char: float | None


@dataclass(frozen=True)
class Ended:
    """How a stream ended, and its timings."""

    reason: str  # length | stop | cancelled | queue_timeout | error | shutdown
    error: str | None
    admitted: float | None
    first_char: float | None
    at: float | None


@dataclass
class Update:
    """What the engine's streams produced since the last update, and its step statistics. Only
    the text is sent for every stream touched; a phase change and an end only when they happen."""

    ids: list[int] = field(default_factory=list)  # the streams touched, by the worker's id
    texts: list[str] = field(default_factory=list)  # each one's text released since the last update
    phases: dict[int, Phase] = field(default_factory=dict)  # streams whose phase changed
    ended: dict[int, Ended] = field(default_factory=dict)  # streams that finished
    logprobs: dict[int, list[Logprob]] = field(default_factory=dict)  # new entries, for streams that asked
    # the scheduler's counters and what its metrics saw since the last update
    steps: int = 0
    chars: int = 0
    lanes: list[int] = field(default_factory=list)
    last_error: str | None = None
    samples: list[tuple[int, float, int]] = field(default_factory=list)  # (batch, seconds, chars) per step
    rejections: list[str] = field(default_factory=list)


ToEngine = Submit | Cancel | Close | Stop  # what the worker sends
FromEngine = Ready | Failed | Update | Exit  # what the engine sends
