"""Execution: one onnxruntime session per served model version, built from the ONNX metadata.

The runtime knows *how* to run a model (providers, threads, where the recurrent state lives) and
nothing about *when* (that is the scheduler's job) or HTTP (the service's). Its API is small and
numpy-shaped so the step scheduler, forecast sessions and batch forecast jobs can all reuse it:

- char models: :meth:`Runtime.zero_state`, :meth:`Runtime.step` (tokens + state -> last logits +
  state), :meth:`Runtime.take` / :meth:`Runtime.concat` to reshape the batch of states when
  streams join or leave;
- forecasters: :meth:`Runtime.forecast` (windows -> forecasts, zero initial state) and
  :meth:`Runtime.forecast_step` (new observations + carried state -> forecast + state).

Results are batch-invariant on CPU: a row's output is bit-for-bit the same whatever else shares
the call (see :meth:`Runtime._run`), which is what makes seeded generation reproducible among
concurrent streams and batched forecasts equal to one-by-one ones.

State is opaque to callers: a tuple of numpy arrays, one per tensor of the model's state
description (``rnnops.state`` in the ONNX metadata, :class:`rnnops.contract.StateTensor`: name,
shape, dtype and which axis is the batch), or, with IOBinding (on by default for CUDA), a tuple
of ``OrtValue`` living on the device so that stepping never copies it to the host; only the
logits come back for sampling. Zeroing, gathering (:meth:`Runtime.take`) and joining
(:meth:`Runtime.concat`) read that description alone, along each tensor's own batch axis, so an
LSTM's ``[layers, B, hidden]`` pair and a matrix-memory cell's ``[B, heads, d_k, d_v]`` go through
the same code. Rearranging the batch (a stream joins or leaves) goes through the host: a copy of
a few hundred KB at a step boundary, not per step.

No torch here (serving images don't have it): only onnxruntime and numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnops import contract
from rnnops.errors import RnnopsError

log = logging.getLogger("rnnops.serving")

State = tuple  # tuple[np.ndarray, ...] or tuple[ort.OrtValue, ...]

_REQUIRED = {
    "char": ("kind", "cell", "layers", "hidden_size", "vocab"),
    "forecaster": ("kind", "cell", "layers", "hidden_size", "feature_names", "target_names", "lookback", "horizon"),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the ONNX metadata says about a model (the contract's ``rnnops.*`` keys)."""

    kind: str
    cell: str
    layers: int
    hidden_size: int
    state: tuple[contract.StateTensor, ...]
    stateful: bool
    vocab: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    target_names: tuple[str, ...] = ()
    lookback: int = 0
    horizon: int = 0
    freq: str | None = None
    source_run: str | None = None
    exported_by: str | None = None
    quantiles: tuple[float, ...] = ()  # prediction-interval levels (rnnops.quantiles); () = none
    quantiles_output: str | None = None  # the graph output holding them, [B, horizon, F_out, levels]
    precision: str = "fp32"  # rnnops.precision: "int8" for the fixed-scale int8 file (rnnops.export.int8)

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return tuple(t.input for t in self.state)

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return tuple(t.output for t in self.state)

    @property
    def main_output(self) -> str:
        return contract.CHAR_OUTPUT if self.kind == "char" else contract.FORECAST_OUTPUT

    @classmethod
    def from_metadata(cls, meta: dict, where: str = "model") -> "ModelInfo":
        kind = meta.get("kind")
        if kind not in _REQUIRED:
            raise RnnopsError(f"{where}: metadata rnnops.kind is {kind!r}; serving needs 'char' or 'forecaster' "
                              "(was it exported with `rnnops export`?)")
        missing = [k for k in _REQUIRED[kind] if meta.get(k) in (None, "", [])]
        if missing:
            raise RnnopsError(f"{where}: ONNX metadata lacks {', '.join('rnnops.' + k for k in missing)}")
        try:
            state = contract.state_spec(meta)
            bands = contract.quantiles_of(meta)
        except ValueError as exc:
            raise RnnopsError(f"{where}: {exc}") from None
        return cls(
            kind=kind,
            cell=str(meta["cell"]),
            layers=int(meta["layers"]),
            hidden_size=int(meta["hidden_size"]),
            state=state,
            stateful=bool(meta.get("stateful", True)),
            vocab=tuple(meta.get("vocab") or ()),
            feature_names=tuple(meta.get("feature_names") or ()),
            target_names=tuple(meta.get("target_names") or ()),
            lookback=int(meta.get("lookback") or 0),
            horizon=int(meta.get("horizon") or 0),
            freq=meta.get("freq"),
            source_run=meta.get("source_run"),
            exported_by=meta.get("version"),
            quantiles=bands[1] if bands else (),
            quantiles_output=bands[0] if bands else None,
            precision=str(meta.get("precision") or "fp32"),
        )


def choose_providers(requested: str) -> tuple[list[str], str, str | None]:
    """Execution providers for ``RNNOPS_PROVIDERS``: (providers, device, warning or None)."""
    wanted = [p.strip().lower() for p in requested.split(",") if p.strip()]
    if "cuda" in wanted:
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", None
        return ["CPUExecutionProvider"], "cpu", (
            f"RNNOPS_PROVIDERS={requested} but this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); serving on CPU. For GPU serving install onnxruntime-gpu "
            "with a matching CUDA runtime.")
    return ["CPUExecutionProvider"], "cpu", None


class Runtime:
    """An onnxruntime session for one model version plus what its metadata says."""

    def __init__(self, path: str | Path, *, providers: str = "cpu", threads: int = 1, iobinding: str = "auto",
                 name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.stem
        wanted, device, warning = choose_providers(providers)
        if warning:
            log.warning(warning)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # A server shares its cores with the event loop and the sampler: threads that spin
        # between ORT calls would steal them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No CPU arena: ORT's arena grows by doubling to the largest batch x prefill it has seen
        # and never gives memory back, so a server's RSS crept up with each new peak shape (the
        # soak, docs/reliability.md). Plain malloc measured no slower for these graphs (a step at
        # batch 64/256 and a 128-character prefill within 2 %, batch 1 15 % faster).
        opts.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RnnopsError(f"{self.path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        self.providers = list(self.session.get_providers())
        if device == "cuda" and self.providers[0] != "CUDAExecutionProvider":
            log.warning("RNNOPS_PROVIDERS=%s: onnxruntime could not start CUDA for %s (no GPU or CUDA libraries?); "
                        "serving on CPU", providers, self.path)
            device = "cpu"
        self.device = device
        self.threads = opts.intra_op_num_threads
        self.iobinding = iobinding == "1" or (iobinding == "auto" and device == "cuda")
        meta = contract.decode_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        self.metadata = meta
        self.info = ModelInfo.from_metadata(meta, where=str(self.path))
        self._check_graph()
        self._index = {c: i for i, c in enumerate(self.info.vocab)}

    # ------------------------------------------------------------------ description

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.info.vocab

    def describe(self) -> dict:
        i = self.info
        d = {"kind": i.kind, "cell": i.cell, "layers": i.layers, "hidden_size": i.hidden_size, "precision": i.precision,
             "state": [t.to_json() for t in i.state], "stateful": i.stateful, "providers": self.providers, "device": self.device,
             "iobinding": self.iobinding, "threads": self.threads, "source_run": i.source_run}
        if i.kind == "char":
            d["vocab_size"] = len(i.vocab)
        else:
            d.update(features=list(i.feature_names), targets=list(i.target_names), lookback=i.lookback,
                     horizon=i.horizon, freq=i.freq)
            if i.quantiles:
                d["quantiles"] = list(i.quantiles)
        return d

    def _check_graph(self) -> None:
        i = self.info
        inputs = [x.name for x in self.session.get_inputs()]
        outputs = [x.name for x in self.session.get_outputs()]
        want_in = [contract.INPUT, *i.state_inputs]
        want_out = [i.main_output, *i.state_outputs]
        if i.quantiles_output:
            want_out = [*want_out, i.quantiles_output]
        missing = [n for n in want_in if n not in inputs] + [n for n in want_out if n not in outputs]
        if missing:
            raise RnnopsError(f"{self.path}: graph lacks {', '.join(missing)} (inputs {inputs}, outputs {outputs}); "
                              "it does not follow the rnnops ONNX contract")
        self._outputs = want_out[:1 + len(i.state)]  # main + state: what every call fetches

    # ------------------------------------------------------------------ running

    def _run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One session call: main output to the host, state wherever the runtime keeps it.

        On CPU a batch of one runs as a batch of two (the row twice): onnxruntime's CPU kernels
        take another path for a single row (a matrix-vector product) whose results can differ in
        the last float32 bit, and then a stream's text or a forecast would depend on whether it
        happened to run alone. From two rows on, every row is computed the same way (the tests
        check it bitwise), so results never depend on what else shares the call.
        """
        if self.device == "cpu" and x.shape[0] == 1:
            pair = self.concat([state, state])
            out, new = self._run_session(np.concatenate([x, x]), pair)
            return out[:1], self.take(new, [0])
        return self._run_session(x, state)

    def _run_session(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        names = self.info.state_inputs
        if not self.iobinding:
            feeds = {contract.INPUT: x, **{n: s for n, s in zip(names, state)}}
            out = self.session.run(self._outputs, feeds)
            return out[0], tuple(out[1:])
        binding = self.session.io_binding()
        binding.bind_cpu_input(contract.INPUT, np.ascontiguousarray(x))
        for n, s in zip(names, state):
            if isinstance(s, ort.OrtValue):
                binding.bind_ortvalue_input(n, s)
            else:
                binding.bind_cpu_input(n, np.ascontiguousarray(s))
        binding.bind_output(self._outputs[0], "cpu")
        for n in self._outputs[1:]:
            binding.bind_output(n, self.device)  # stays on the device for the next step
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return out[0].numpy(), tuple(out[1:])

    def zero_state(self, batch: int) -> State:
        return tuple(self.to_device(np.zeros(t.shape_for(batch), np.dtype(t.dtype))) for t in self.info.state)

    def to_device(self, a: np.ndarray):
        """A host array as the runtime keeps state: as is, or an OrtValue on the device (IOBinding)."""
        if not self.iobinding:
            return a
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0)

    def state_numpy(self, state: State) -> tuple[np.ndarray, ...]:
        return tuple(s.numpy() if isinstance(s, ort.OrtValue) else s for s in state)

    def take(self, state: State, index) -> State:
        """The states of the streams at ``index`` (a list or array of batch positions)."""
        idx = np.asarray(index, dtype=np.int64)
        return tuple(self.to_device(np.ascontiguousarray(np.take(s, idx, axis=t.batch_axis)))
                     for s, t in zip(self.state_numpy(state), self.info.state))

    def concat(self, states: list[State]) -> State:
        """One batched state from several (streams joining), in order."""
        states = [s for s in states if s is not None and self.batch_of(s) > 0]
        if not states:
            return self.zero_state(0)
        if len(states) == 1:
            return states[0]
        parts = [self.state_numpy(s) for s in states]
        return tuple(self.to_device(np.concatenate([p[k] for p in parts], axis=t.batch_axis))
                     for k, t in enumerate(self.info.state))

    def batch_of(self, state: State) -> int:
        s, axis = state[0], self.info.state[0].batch_axis
        return int(s.shape()[axis] if isinstance(s, ort.OrtValue) else s.shape[axis])

    def run(self, x: np.ndarray, state: State | None = None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One call over ``x`` from ``state`` (None = zeros), everything on the host: the main
        output in full (char: logits ``[B, T, V]``) and the new state (the Open Inference Protocol
        hands out tensors exactly as the ONNX contract names them)."""
        x = np.ascontiguousarray(x, dtype=np.int64 if self.kind == "char" else np.float32)
        if self.kind != "char":
            x = self._window(x)
        y, new = self._run(x, self.zero_state(x.shape[0]) if state is None else tuple(self.to_device(s) for s in state))
        return y, self.state_numpy(new)

    # ------------------------------------------------------------------ char models

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``; raises ValueError naming the characters outside the vocabulary."""
        unknown = sorted({c for c in text if c not in self._index})
        if unknown:
            raise ValueError(unknown)
        return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Char models: tokens int64 ``[B, T]`` from ``state`` -> logits at the last position
        ``[B, V]`` (float32, host) and the new state."""
        if self.info.kind != "char":
            raise RnnopsError(f"{self.name} is a {self.info.kind}, not a char model")
        logits, new = self._run(np.asarray(tokens, dtype=np.int64), state)
        return np.ascontiguousarray(logits[:, -1]), new

    # ------------------------------------------------------------------ forecasters

    def reads(self, window: np.ndarray) -> np.ndarray:
        """The rows of one window ``[T, F]`` (or windows ``[B, T, F]``) the model reads: a windowed
        model its last ``lookback``, a stateful one all of them."""
        i = self.info
        if i.stateful:
            return window
        if window.shape[-2] < i.lookback:
            raise ValueError(f"this windowed model needs {i.lookback} rows per window, got {window.shape[-2]}")
        return window[..., -i.lookback:, :]

    def _window(self, windows: np.ndarray) -> np.ndarray:
        i = self.info
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != len(i.feature_names):
            raise ValueError(f"windows must be [B, T, {len(i.feature_names)}], got {list(x.shape)}")
        return np.ascontiguousarray(self.reads(x))

    def forecast(self, windows: np.ndarray, max_batch: int = 1024) -> np.ndarray:
        """Forecasters: windows float32 ``[B, T, F]`` (raw units) -> ``[B, horizon, F_out]`` (raw units),
        each window from a zero state. Large batches run in chunks of ``max_batch``."""
        if self.info.kind != "forecaster":
            raise RnnopsError(f"{self.name} is a {self.info.kind} model, not a forecaster")
        x = self._window(windows)
        outs = []
        for lo in range(0, x.shape[0], max_batch):
            chunk = x[lo:lo + max_batch]
            y, _ = self._run(chunk, self.zero_state(chunk.shape[0]))
            outs.append(y)
        if not outs:
            return np.zeros((0, self.info.horizon, len(self.info.target_names)), np.float32)
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def forecast_bands(self, windows: np.ndarray, max_batch: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`forecast` and, for a model with prediction intervals (``rnnops.quantiles``), its
        quantiles ``[B, horizon, F_out, levels]`` (raw units, levels as ``info.quantiles``) from the
        same call; ``None`` for a model without them."""
        if not self.info.quantiles_output:
            return self.forecast(windows, max_batch), None
        x = self._window(windows)
        ys, qs = [], []
        for lo in range(0, x.shape[0], max_batch):
            y, q, _ = self._run_bands(x[lo:lo + max_batch], None)
            ys.append(y)
            qs.append(q)
        if not ys:
            i = self.info
            return (np.zeros((0, i.horizon, len(i.target_names)), np.float32),
                    np.zeros((0, i.horizon, len(i.target_names), len(i.quantiles)), np.float32))
        return np.concatenate(ys), np.concatenate(qs)

    def forecast_step_bands(self, x: np.ndarray, state: State | None) -> tuple[np.ndarray, np.ndarray | None, State]:
        """:meth:`forecast_step` plus the quantiles (``None`` for a model without intervals)."""
        if not self.info.quantiles_output:
            y, new = self.forecast_step(x, state)
            return y, None, new
        if self.info.kind != "forecaster" or not self.info.stateful:
            raise RnnopsError(f"{self.name} is not a stateful forecaster")
        return self._run_bands(self._window(x), state)

    def _run_bands(self, x: np.ndarray, state: State | None):
        """One call fetching the main output, the quantiles and the state (host arrays; on CPU a lone
        row runs as a pair, as :meth:`_run` does, so results never depend on what shares the call)."""
        i = self.info
        b = x.shape[0]
        st = self.state_numpy(self.zero_state(b) if state is None else state)
        pair = self.device == "cpu" and b == 1
        if pair:
            x = np.concatenate([x, x])
            st = tuple(np.concatenate([s, s], axis=t.batch_axis) for s, t in zip(st, i.state))
        names = [i.main_output, i.quantiles_output, *i.state_outputs]
        out = self.session.run(names, {contract.INPUT: x, **dict(zip(i.state_inputs, st))})
        y, q, new = out[0], out[1], tuple(out[2:])
        if pair:
            y, q = y[:1], q[:1]
            new = tuple(np.take(s, [0], axis=t.batch_axis) for s, t in zip(new, i.state))
        return y, q, tuple(self.to_device(s) for s in new)

    def forecast_step(self, x: np.ndarray, state: State | None) -> tuple[np.ndarray, State]:
        """Stateful forecasters: new observations ``[B, T, F]`` from ``state`` (None = zeros) ->
        forecast ``[B, horizon, F_out]`` and the new state. O(T), independent of the history."""
        if self.info.kind != "forecaster" or not self.info.stateful:
            raise RnnopsError(f"{self.name} is not a stateful forecaster")
        x = self._window(x)
        if state is None:
            state = self.zero_state(x.shape[0])
        return self._run(x, state)
