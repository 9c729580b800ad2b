"""Execution: one onnxruntime session per served model version, built from the ONNX metadata.

The runtime knows *how* to run a model (providers, threads, where the recurrent state lives) and
nothing about *when* (that is the scheduler's job) or HTTP (the service's). Every model call goes
through one method, :meth:`Runtime.run` (inputs + state -> a typed :class:`RunResult`: the main
output, the quantiles of a forecaster with prediction intervals, the new state), so batch
invariance and IOBinding live in one place. Around it, numpy-shaped helpers reshape the batch of
states when streams or sessions join or leave: :meth:`Runtime.zero_state`, :meth:`Runtime.take`,
:meth:`Runtime.concat`. Its users: the step scheduler (char models), the forecast batcher and the
session stepper (:mod:`rnnops.serving.forecast`), OIP's stateless calls and the batch jobs.

Results are batch-invariant on CPU: a row's output is bit-for-bit the same whatever else shares
the call (see :meth:`Runtime._call`), which is what makes seeded generation reproducible among
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

Over 400 lines on purpose: the one model call (``Runtime.run``) and what it must get right
once (IOBinding, the lone-row pairing, chunking, the state layout it reads) are one idea;
splitting them would put the state layout away from its only reader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from rnnops import contract
from rnnops import panel_contract as pc
from rnnops.errors import RnnopsError
from rnnops.metadata_limits import MetadataError
from rnnops.panel_contract import PanelContract

log = logging.getLogger("rnnops.serving")

State = tuple[Any, ...]  # np.ndarray or ort.OrtValue (untyped) items
Outputs = Literal["all", "last"]  # Runtime.run: the main output in full, or a char model's last position only
Feeds = dict[str, np.ndarray]  # graph input name -> array [B, ...]: a model's inputs, state aside


@dataclass(frozen=True)
class RunResult:
    """What one :meth:`Runtime.run` gives back."""

    # host: char logits [B, T, V] ([B, V] with outputs="last"); forecasts [B, horizon, F_out] (a panel
    # model's [B, horizon] and [B, horizon, levels] come back in this shape too, F_out = 1)
    output: np.ndarray
    state: State  # the new state, where the runtime keeps it (host arrays, or OrtValues with IOBinding)
    quantiles: np.ndarray | None = None  # host, [B, horizon, F_out, levels]: a forecaster with intervals; else None


_REQUIRED = {
    "char": ("kind", "cell", "layers", "hidden_size", "vocab"),
    "forecaster": ("kind", "cell", "layers", "hidden_size", "feature_names", "target_names", "lookback", "horizon"),
    pc.KIND: ("kind", pc.META_KEY),  # the rest is rnnops.panel's (PanelContract)
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
    panel: PanelContract | None = None  # a panel model's contract: its graph inputs per role (rnnops.panel)

    @property
    def state_inputs(self) -> tuple[str, ...]:
        return tuple(t.input for t in self.state)

    @property
    def state_outputs(self) -> tuple[str, ...]:
        return tuple(t.output for t in self.state)

    @property
    def main_output(self) -> str:
        return contract.CHAR_OUTPUT if self.kind == "char" else contract.FORECAST_OUTPUT

    @property
    def graph_inputs(self) -> tuple[str, ...]:
        """The graph's inputs other than state: ``x`` (char models, forecasters) or a panel
        model's role inputs (past_target, known_future...)."""
        return tuple(self.panel.inputs) if self.panel is not None else (contract.INPUT,)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], where: str = "model") -> ModelInfo:
        kind = meta.get("kind")
        if kind not in _REQUIRED:
            raise RnnopsError(
                f"{where}: metadata rnnops.kind is {kind!r}; serving needs 'char', 'forecaster' or 'panel' "
                "(was it exported with `rnnops export`?)"
            )
        missing = [k for k in _REQUIRED[kind] if meta.get(k) in (None, "", [])]
        if missing:
            raise RnnopsError(f"{where}: ONNX metadata lacks {', '.join('rnnops.' + k for k in missing)}")
        if kind == pc.KIND:
            return cls._panel(meta, where)
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

    @classmethod
    def _panel(cls, meta: dict[str, Any], where: str) -> ModelInfo:
        """A panel model: windowed (no state), one target, its sizes and levels from rnnops.panel."""
        try:
            p = pc.panel_contract(meta)
        except MetadataError as exc:
            raise RnnopsError(f"{where}: {exc}") from None
        assert p is not None, "kind is panel"
        return cls(
            kind=pc.KIND,
            cell=str(meta.get("cell") or ""),
            layers=int(meta.get("layers") or 0),
            hidden_size=int(meta.get("hidden_size") or 0),
            state=(),
            stateful=False,
            target_names=(p.target,),
            lookback=p.lookback,
            horizon=p.horizon,
            freq=p.freq,
            source_run=meta.get("source_run"),
            exported_by=meta.get("version"),
            quantiles=p.quantiles,
            quantiles_output=pc.QUANTILES,
            precision=str(meta.get("precision") or "fp32"),
            panel=p,
        )


def choose_providers(requested: str) -> tuple[list[str], str, str | None]:
    """Execution providers for ``RNNOPS_PROVIDERS``: (providers, device, warning or None)."""
    wanted = [p.strip().lower() for p in requested.split(",") if p.strip()]
    if "cuda" in wanted:
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", None
        return (
            ["CPUExecutionProvider"],
            "cpu",
            (
                f"RNNOPS_PROVIDERS={requested} but this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); serving on CPU. For GPU serving install onnxruntime-gpu "
                "with a matching CUDA runtime."
            ),
        )
    return ["CPUExecutionProvider"], "cpu", None


def session_options(threads: int) -> ort.SessionOptions:
    """The options of every serving session (the model's, and its decode graph's)."""
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
    return opts


def run_bound(
    session: ort.InferenceSession, feeds: dict[str, Any], host: list[str], kept: list[str], device: str
) -> list[Any]:
    """One call through IOBinding: host arrays and ``OrtValue``s in; the ``host`` outputs come back
    as numpy arrays, the ``kept`` ones (the state) stay on ``device`` as ``OrtValue``s for the next
    call. Returns the outputs in that order (the model's session and its decode graph's)."""
    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in host:
        binding.bind_output(name, "cpu")
    for name in kept:
        binding.bind_output(name, device)  # stays on the device for the next call
    session.run_with_iobinding(binding)
    out = binding.get_outputs()
    return [o.numpy() for o in out[: len(host)]] + list(out[len(host) :])


class Runtime:
    """An onnxruntime session for one model version plus what its metadata says."""

    def __init__(
        self,
        path: str | Path,
        *,
        providers: str = "cpu",
        threads: int = 1,
        iobinding: str = "auto",
        name: str | None = None,
    ):
        self.path = Path(path)
        self.name = name or self.path.stem
        wanted, device, warning = choose_providers(providers)
        if warning:
            log.warning(warning)
        opts = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RnnopsError(f"{self.path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        self.providers = list(self.session.get_providers())
        if device == "cuda" and self.providers[0] != "CUDAExecutionProvider":
            log.warning(
                "RNNOPS_PROVIDERS=%s: onnxruntime could not start CUDA for %s (no GPU or CUDA libraries?); "
                "serving on CPU",
                providers,
                self.path,
            )
            device = "cpu"
        self.device = device
        self.threads = opts.intra_op_num_threads
        self.iobinding = iobinding == "1" or (iobinding == "auto" and device == "cuda")
        meta = contract.decode_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        self.metadata = meta
        self.info = ModelInfo.from_metadata(meta, where=str(self.path))
        self._check_graph()
        self._index = {c: i for i, c in enumerate(self.info.vocab)}

    def session_options(self) -> ort.SessionOptions:
        """Options for another session of this model's (its decode graph, generate/decode_graph.py)."""
        return session_options(self.threads)

    # ------------------------------------------------------------------ description

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.info.vocab

    def describe(self) -> dict[str, Any]:
        i = self.info
        d = {
            "kind": i.kind,
            "cell": i.cell,
            "layers": i.layers,
            "hidden_size": i.hidden_size,
            "precision": i.precision,
            "state": [t.to_json() for t in i.state],
            "stateful": i.stateful,
            "providers": self.providers,
            "device": self.device,
            "iobinding": self.iobinding,
            "threads": self.threads,
            "source_run": i.source_run,
        }
        if i.kind == "char":
            d["vocab_size"] = len(i.vocab)
        elif i.panel is not None:
            d.update(targets=list(i.target_names), lookback=i.lookback, horizon=i.horizon, freq=i.freq)
            d.update(quantiles=list(i.quantiles), panel=i.panel.to_json())
        else:
            d.update(
                features=list(i.feature_names),
                targets=list(i.target_names),
                lookback=i.lookback,
                horizon=i.horizon,
                freq=i.freq,
            )
            if i.quantiles:
                d["quantiles"] = list(i.quantiles)
        return d

    def _check_graph(self) -> None:
        i = self.info
        inputs = [x.name for x in self.session.get_inputs()]
        outputs = [x.name for x in self.session.get_outputs()]
        want_in = [*i.graph_inputs, *i.state_inputs]
        want_out = [i.main_output, *i.state_outputs]
        if i.quantiles_output:
            want_out = [*want_out, i.quantiles_output]
        missing = [n for n in want_in if n not in inputs] + [n for n in want_out if n not in outputs]
        if missing:
            raise RnnopsError(
                f"{self.path}: graph lacks {', '.join(missing)} (inputs {inputs}, outputs {outputs}); "
                "it does not follow the rnnops ONNX contract"
            )
        # what every call fetches: the main output and the quantiles (read on the host), the state
        self._host_outputs = 2 if i.quantiles_output else 1
        self._outputs = [i.main_output, *([i.quantiles_output] if i.quantiles_output else []), *i.state_outputs]

    # ------------------------------------------------------------------ running

    def run(
        self,
        inputs: np.ndarray | Feeds,
        state: State | None = None,
        outputs: Outputs = "all",
        max_batch: int | None = None,
    ) -> RunResult:
        """The one way to call the model: ``inputs`` from ``state`` (None = zeros) -> a :class:`RunResult`.

        ``inputs``: a char model's token ids ``[B, T]``; a forecaster's windows ``[B, T, F]`` (raw
        units; a windowed model reads their last ``lookback`` rows, see :meth:`reads`); a panel
        model's feeds, graph input name -> ``[B, ...]`` (:mod:`rnnops.panel_features` builds
        them; :meth:`_panel_feeds` checks them against the contract). ``state``:
        host arrays or the runtime's own (device) state, batch ``B``; a windowed forecaster takes
        none. ``outputs="last"`` keeps a char model's logits at the last position only (``[B, V]``:
        what decoding samples from). ``max_batch`` cuts a large batch into calls of at most that
        many rows (the results are the same: batch invariance).
        """
        i = self.info
        if i.kind == "char":
            x = {contract.INPUT: np.ascontiguousarray(inputs, dtype=np.int64)}
        else:
            if outputs == "last":
                raise RnnopsError(f"{self.name} is a forecaster: outputs='last' is for char models")
            if state is not None and not i.stateful:
                raise RnnopsError(f"{self.name} is a windowed forecaster: it carries no state between calls")
            if i.panel is not None:
                x = self._panel_feeds(inputs)
            elif isinstance(inputs, dict):
                raise ValueError(f"{self.name} takes windows [B, T, F], not named feeds (those are a panel model's)")
            else:
                x = {contract.INPUT: self._window(inputs)}
        b = next(iter(x.values())).shape[0]
        if b == 0:
            return self._empty(x[i.graph_inputs[0]], outputs)
        if state is not None:
            state = tuple(self.to_device(s) if isinstance(s, np.ndarray) else s for s in state)
        step = max_batch if max_batch and max_batch < b else b
        parts = []
        for lo in range(0, b, step):
            hi = min(b, lo + step)
            if state is None:
                st = self.zero_state(hi - lo)
            else:  # the whole state, or the rows of this chunk
                st = state if step == b else self.take(state, np.arange(lo, hi))
            parts.append(self._call({k: v[lo:hi] for k, v in x.items()}, st))
        if len(parts) == 1:
            y, q, new = parts[0]
        else:
            y = np.concatenate([p[0] for p in parts])
            q = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
            new = self.concat([p[2] for p in parts])
        if outputs == "last":
            y = np.ascontiguousarray(y[:, -1])
        if i.panel is not None:  # [B, H] and [B, H, Q] -> the forecasters' [B, H, 1] and [B, H, 1, Q]
            y = y[:, :, None]
            q = None if q is None else q[:, :, None, :]
        return RunResult(y, new, q)

    def _empty(self, x: np.ndarray, outputs: Outputs) -> RunResult:
        """A batch of none: no call (onnxruntime would refuse some zero-sized shapes)."""
        i = self.info
        if i.kind == "char":
            y = np.zeros((0, len(i.vocab)) if outputs == "last" else (0, x.shape[1], len(i.vocab)), np.float32)
        else:
            y = np.zeros((0, i.horizon, len(i.target_names)), np.float32)
        q = np.zeros((*y.shape, len(i.quantiles)), np.float32) if i.quantiles_output else None
        return RunResult(y, self.zero_state(0), q)

    def _call(self, x: Feeds, state: State) -> tuple[np.ndarray, np.ndarray | None, State]:
        """One session call: the main output (and the quantiles, if the model has them) to the
        host, the state wherever the runtime keeps it.

        On CPU a batch of one runs as a batch of two (the row twice): onnxruntime's CPU kernels
        take another path for a single row (a matrix-vector product) whose results can differ in
        the last float32 bit, and then a stream's text or a forecast would depend on whether it
        happened to run alone. From two rows on, every row is computed the same way (the tests
        check it bitwise), so results never depend on what else shares the call.
        """
        if self.device == "cpu" and next(iter(x.values())).shape[0] == 1:
            pair = {k: np.concatenate([v, v]) for k, v in x.items()}
            y, q, new = self._session_call(pair, self.concat([state, state]))
            return y[:1], None if q is None else q[:1], self.take(new, [0])
        return self._session_call(x, state)

    def _session_call(self, x: Feeds, state: State) -> tuple[np.ndarray, np.ndarray | None, State]:
        names = self.info.state_inputs
        host = self._outputs[: self._host_outputs]  # main (+ quantiles): read on the host
        if not self.iobinding:
            feeds = {**x, **{n: s for n, s in zip(names, state)}}
            out = self.session.run(self._outputs, feeds)
        else:
            feeds = {**x, **dict(zip(names, state))}
            out = run_bound(self.session, feeds, host, self._outputs[len(host) :], self.device)
        q = out[1] if len(host) == 2 else None
        return out[0], q, tuple(out[len(host) :])

    def zero_state(self, batch: int) -> State:
        return tuple(self.to_device(np.zeros(t.shape_for(batch), np.dtype(t.dtype))) for t in self.info.state)

    def to_device(self, a: np.ndarray) -> Any:  # np.ndarray, or an ort.OrtValue (untyped)
        """A host array as the runtime keeps state: as is, or an OrtValue on the device (IOBinding)."""
        if not self.iobinding:
            return a
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0)

    def state_numpy(self, state: State) -> tuple[np.ndarray, ...]:
        return tuple(s.numpy() if isinstance(s, ort.OrtValue) else s for s in state)

    def take(self, state: State, index: Sequence[int] | np.ndarray) -> State:
        """The states of the streams at ``index`` (a list or array of batch positions)."""
        idx = np.asarray(index, dtype=np.int64)
        return tuple(
            self.to_device(np.ascontiguousarray(np.take(s, idx, axis=t.batch_axis)))
            for s, t in zip(self.state_numpy(state), self.info.state)
        )

    def concat(self, states: list[State]) -> State:
        """One batched state from several (streams joining), in order."""
        if not self.info.state:  # a model without state (a panel model)
            return ()
        states = [s for s in states if s is not None and self.batch_of(s) > 0]
        if not states:
            return self.zero_state(0)
        if len(states) == 1:
            return states[0]
        parts = [self.state_numpy(s) for s in states]
        return tuple(
            self.to_device(np.concatenate([p[k] for p in parts], axis=t.batch_axis))
            for k, t in enumerate(self.info.state)
        )

    def batch_of(self, state: State) -> int:
        s, axis = state[0], self.info.state[0].batch_axis
        return int(s.shape()[axis] if isinstance(s, ort.OrtValue) else s.shape[axis])

    # ------------------------------------------------------------------ char models

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``; raises ValueError naming the characters outside the vocabulary."""
        unknown = sorted({c for c in text if c not in self._index})
        if unknown:
            raise ValueError(unknown)
        return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))

    # ------------------------------------------------------------------ forecasters

    def reads(self, window: np.ndarray) -> np.ndarray:
        """The rows of one window ``[T, F]`` (or windows ``[B, T, F]``) the model reads: a windowed
        model its last ``lookback``, a stateful one all of them."""
        i = self.info
        if i.stateful:
            return window
        if window.shape[-2] < i.lookback:
            raise ValueError(f"this windowed model needs {i.lookback} rows per window, got {window.shape[-2]}")
        return window[..., -i.lookback :, :]

    def _panel_feeds(self, inputs: np.ndarray | Feeds) -> Feeds:
        """A panel model's feeds checked against its contract: every input, each ``[B, ...]`` of
        the contract's shape and dtype, one B for all (a mismatch is a caller's bug: ValueError)."""
        p = self.info.panel
        assert p is not None
        if not isinstance(inputs, dict) or set(inputs) != set(p.inputs):
            given = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"a panel model takes the feeds {sorted(p.inputs)}, got {given}")
        out, batch = {}, None
        for name, (shape, dtype) in p.inputs.items():
            a = np.ascontiguousarray(inputs[name], dtype=dtype)
            if a.shape[1:] != tuple(shape[1:]) or (batch is not None and a.shape[0] != batch):
                raise ValueError(f"{name} must be [B, {', '.join(map(str, shape[1:]))}], got {list(a.shape)}")
            batch = a.shape[0]
            out[name] = a
        return out

    def _window(self, windows: np.ndarray) -> np.ndarray:
        i = self.info
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != len(i.feature_names):
            raise ValueError(f"windows must be [B, T, {len(i.feature_names)}], got {list(x.shape)}")
        return np.ascontiguousarray(self.reads(x))
