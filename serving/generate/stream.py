"""One generation in flight (:class:`Stream`) and its stop strings (:class:`StopStrings`).

A stream is written by the scheduler's thread and read by one consumer. It knows nothing of
transports: the HTTP layer attaches its own ``watcher`` to be woken (see
:mod:`rnnops.serving.http.generate`); threads and tests block on :meth:`Stream.result`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rnnops.serving.generate.sampling import SamplingParams, new_rng

if TYPE_CHECKING:
    from rnnops.serving.generate.client import GenerationClient
    from rnnops.serving.runtime import State


class Watcher(Protocol):
    """What a transport attaches to a stream to be woken (http/streaming.py's StreamWatch)."""

    waiting: bool  # its consumer is blocked, waiting for a wake-up
    loop: asyncio.AbstractEventLoop  # the consumer's event loop
    event: asyncio.Event  # set (on that loop) to wake it

    def due(self, now: float) -> bool: ...


# one character's log-probability and the top k alternatives' (OpenAI ``logprobs``)
Logprob = tuple[float, dict[str, float]]

_ids = itertools.count(1)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: np.ndarray  # int64 token ids, at least one
    max_chars: int = 200
    params: SamplingParams = SamplingParams()
    seed: int | None = None  # None: a random seed (reported in the stats, so a text can be replayed)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: each character's log-probability and the top k


@dataclass
class Timing:
    enqueued: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_char: float | None = None
    finished: float | None = None


class StopStrings:
    """Where a stream's text ends, and how much of it is safe to hand out.

    Both answers come from the same match, which is why they live together: a stop string ends
    the stream at the step it completes (the scheduler frees the slot then), and a tail that
    could still become one is held back, so a client never sees part of a stop string.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)

    def match(self, generated: list[str]) -> int | None:
        """Length of the text before a stop string that ``generated`` now ends with, else None."""
        if not self.stops:
            return None
        text = "".join(generated[-self.longest :])
        for s in self.stops:
            if text.endswith(s):
                return len(generated) - len(s)
        return None

    def held_back(self, generated: list[str]) -> int:
        """Length of the longest tail of ``generated`` that could still become a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(generated)), best, -1):
                if "".join(generated[-n:]) == s[:n]:
                    best = n
                    break
        return best


class Stream:
    """One generation: its request, sampler state, phase, text and timings."""

    def __init__(self, request: GenerationRequest):
        self.id = next(_ids)
        self.request = request
        self.seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.rng = new_rng(self.seed)
        self.stops = StopStrings(request.stop)
        self.phase = "queued"  # queued -> prefill -> decode -> done
        self.timing = Timing()
        self.cursor = 0  # prompt characters prefilled so far
        self.state: State | None = None  # this stream's state while it prefills (batch of one)
        self.generated: list[str] = []  # every sampled character (stop string included)
        self._released = 0  # characters handed to the output queue
        self._out: deque[str] = deque()
        self.finish_reason: str | None = None  # length | stop | cancelled | queue_timeout | error | shutdown
        self.error: str | None = None
        self.cancelled = False
        self._done = threading.Event()
        self.watcher: Watcher | None = None  # the consumer's wake-up hook, set by the transport
        self.scheduler: GenerationClient | None = None  # the GenerationClient that runs it (told on cancel)
        # per sampled character (aligned with ``generated``), when the request asks for them:
        # (its log-probability, {character: log-probability} of the top ``logprobs`` ones)
        self.logprobs: list[Logprob] = []

    # ---- consumer side ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def admitted(self) -> bool:
        return self.phase != "queued"

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def drain(self) -> str:
        """Characters produced since the last drain (never part of a pending stop string)."""
        out = []
        q = self._out
        while q:
            out.append(q.popleft())
        return "".join(out)

    def cancel(self) -> None:
        """The client went away: the slot is freed at the next step boundary."""
        if not self.done and not self.cancelled:
            self.cancelled = True
            if self.scheduler is not None:
                self.scheduler.cancel(self)

    def result(self, timeout: float | None = None) -> str:
        """Block until finished (threads, tests); returns the whole text."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"stream {self.id} not finished after {timeout}s")
        return self.text

    @property
    def text(self) -> str:
        """What was delivered (a pending stop-string prefix is not)."""
        return "".join(self.generated[: self._released])

    def stats(self) -> dict[str, Any]:
        t = self.timing
        end = t.finished or time.monotonic()
        n = len(self.text)
        ttfc = (t.first_char - t.enqueued) if t.first_char else None
        busy = end - t.enqueued
        return {
            "chars": n,
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "ttfc_ms": round(ttfc * 1e3, 3) if ttfc is not None else None,
            "queue_ms": round(((t.admitted or end) - t.enqueued) * 1e3, 3),
            "duration_ms": round(busy * 1e3, 3),
            "chars_per_s": round(n / busy, 2) if busy > 0 else None,
            "prompt_chars": int(len(self.request.prompt_ids)),
        }

    # ---- scheduler side ----------------------------------------------------------------

    def note_logprobs(self, logits: np.ndarray, token: int, vocab: Sequence[str]) -> None:
        """Record the model's log-probabilities (raw logits, before temperature and top-k/p)
        for the character about to be pushed; only for requests that asked (OpenAI ``logprobs``)."""
        k = self.request.logprobs
        if k is None:
            return
        z = logits.astype(np.float64)
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        top = np.argsort(-lp, kind="stable")[:k] if k else ()
        self.logprobs.append((float(lp[token]), {vocab[i]: float(lp[i]) for i in top}))

    def push(self, ch: str) -> bool:
        """Add a sampled character; returns True when the stream is finished."""
        if self.timing.first_char is None:
            self.timing.first_char = time.monotonic()
        self.generated.append(ch)
        if not self.stops.stops:  # the common case, once per stream per step: nothing to match or hold back
            if len(self.generated) >= self.request.max_chars:
                self._release(len(self.generated))
                self.finish("length")
                return True
            self._out.append(ch)
            self._released += 1
            return False
        stop_at = self.stops.match(self.generated)
        if stop_at is not None:
            self._release(stop_at)
            self.finish("stop")
            return True
        if len(self.generated) >= self.request.max_chars:
            self._release(len(self.generated))
            self.finish("length")
            return True
        self._release(len(self.generated) - self.stops.held_back(self.generated))
        return False

    def push_text(self, text: str) -> bool:
        """Add the characters one decode call sampled for this stream, as :meth:`push` one at a
        time would: the stream finishes at the first character that ends it (its length, a stop
        string) and the characters after it are dropped. Returns True when the stream is finished."""
        if self.stops.stops:  # each character may complete or start a stop string: one at a time
            return any(self.push(ch) for ch in text)
        if self.timing.first_char is None:
            self.timing.first_char = time.monotonic()
        room = self.request.max_chars - len(self.generated)
        if len(text) >= room:
            self.generated.extend(text[:room])
            self._release(len(self.generated))
            self.finish("length")
            return True
        self.generated.extend(text)
        self._out.append(text)
        self._released += len(text)
        return False

    def receive(self, text: str, logprobs: list[Logprob] | None = None) -> None:
        """Characters released by a stream elsewhere (the engine process: stop strings already
        handled there), with their log-probabilities; those first, since a consumer on the event
        loop reads them for the text it drains (OpenAI ``logprobs``)."""
        if logprobs:
            self.logprobs.extend(logprobs)
        if text:
            self.generated.extend(text)
            self._out.extend(text)
            self._released += len(text)

    def _release(self, upto: int) -> None:
        if upto > self._released:
            self._out.extend(self.generated[self._released : upto])
            self._released = upto

    def finish(self, reason: str, error: str | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.error = error
        self.timing.finished = time.monotonic()
        self.phase = "done"
        self.state = None
        self.finish_reason = reason
        self._done.set()
