"""The training loop, visible: AdamW, gradient clipping, warm-up + cosine schedule, periodic
evaluation, early stopping, checkpoints (safetensors + a weights-only state dict), resume.

The loop knows nothing about MLflow or the task: a job hands it a batch sampler, a loss, an
evaluation and a ``log`` callback.

**Resume is exact.** A checkpoint holds everything that decides the rest of a run: the weights,
the best weights so far, AdamW's state, the step, the early-stopping counters, and every random
state the loop draws from (the batch sampler's generator, torch's global generator, which
dropout uses, numpy's and Python's). A run bounded by steps (``--time-budget 0``) that is
killed at any moment, even with SIGKILL, and resumed from its last checkpoint ends with the same
weights and metrics, bit for bit on CPU, as the run that was never stopped
(``tests/test_resume.py``). Ctrl-C or an exception saves the state the loop was in when the step
(or evaluation) that was running began, so that one is redone on resume.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rnnops.errors import Terminated
from rnnops.training.progress import TrainBar

CHECKPOINT_FORMAT = 2  # trainer.pt holds the weights too (format 1: weights only in model.safetensors)


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 200
    patience: int = 5  # evaluations without improvement before stopping
    time_budget_s: float = 0.0  # 0 = none; when set, the schedule runs on elapsed time too
    seed: int = 1337


def lr_at(s: TrainSettings, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from lr to ``min_lr_ratio*lr``."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------- random states


def _snapshot(batches: torch.Generator, full: bool = True) -> tuple:
    """The random states the loop can draw from, as they are. ``full=False`` (the rewind point
    taken before every step and evaluation, so it must be cheap: numpy's get_state alone costs
    ~90 us) leaves out numpy's and Python's, which the loop and the jobs never draw from while
    training (batches come from ``batches``, dropout from torch's global generator)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return (
        batches.get_state(),
        torch.get_rng_state(),
        np.random.get_state() if full else None,
        random.getstate() if full else None,
        cuda,
    )


def _restore(snap: tuple, batches: torch.Generator) -> None:
    gen, cpu, numpy_state, python_state, cuda = snap
    batches.set_state(gen)
    torch.set_rng_state(cpu)
    if numpy_state is not None:
        np.random.set_state(numpy_state)
    if python_state is not None:
        random.setstate(python_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def rng_state(batches: torch.Generator) -> dict:
    """The random states as tensors and plain values (weights-only safe): the batch sampler's
    generator, torch's global one (dropout), numpy's and Python's (and CUDA's when in use)."""
    gen, cpu, _, _, cuda = _snapshot(batches, full=False)
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "batches": gen,
        "torch": cpu,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def set_rng_state(state: dict, batches: torch.Generator) -> None:
    n, p = state["numpy"], state["python"]
    _restore(
        (
            state["batches"],
            state["torch"],
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]),
            (p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]),
            state["cuda"] if "cuda" in state and torch.cuda.is_available() else None,
        ),
        batches,
    )


def _raise_terminated(signum, frame):
    raise Terminated()


_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def _sigterm_raises_terminated() -> Callable[[], None]:
    """For the training loop: SIGTERM raises ``Terminated`` instead of killing the process before
    a checkpoint. Only where SIGTERM has its default action, on the main thread. Returns the undo."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return lambda: None
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    return lambda: signal.signal(signal.SIGTERM, old)


class _DeferInterrupt:
    """Holds a Ctrl-C (SIGINT) or SIGTERM back until the block ends, so the optimizer step and the
    step count (or an evaluation's outcome) change together. Main thread only; elsewhere it does
    nothing."""

    def __enter__(self):
        self.old, self.hit = {}, None
        if threading.current_thread() is threading.main_thread():
            self.old = {sig: signal.signal(sig, self._record) for sig in _INTERRUPTS}
        return self

    def _record(self, signum, frame):
        self.hit = self.hit or (signum, frame)

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        if self.hit is not None:
            old = self.old[self.hit[0]]
            if callable(old):
                old(*self.hit)  # default_int_handler raises KeyboardInterrupt here, ours Terminated
            elif old == signal.SIG_DFL:
                signal.raise_signal(self.hit[0])
        return False


# ---------------------------------------------------------------- checkpoint


class Checkpoint:
    """Files in ``folder``: trainer.pt (the whole training state), model.safetensors (latest
    weights), best.safetensors (best so far), job.json.

    trainer.pt is the commit point: it holds the weights, the best weights, AdamW's state, the
    loop's state and every random state, in one file written to a temporary name, flushed to disk
    and renamed, so a crash or a SIGKILL at any moment leaves either the previous checkpoint or
    the new one, never a mix. It holds only tensors and plain values and is read with
    ``weights_only=True``. The two safetensors files are copies for people and tools.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "trainer.pt").is_file()

    def save_job(self, job: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_text(self.folder / "job.json", json.dumps(job, indent=2))

    def load_job(self) -> dict:
        return json.loads((self.folder / "job.json").read_text())

    def save(
        self,
        model,
        optimizer,
        trainer_state: dict,
        best: bool = False,
        rng: dict | None = None,
        best_weights: dict | None = None,
    ) -> None:
        """``best``: these weights are the best so far; ``best_weights`` (else the current weights
        when ``best``) are kept as the best in trainer.pt."""
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = _cpu(model.state_dict())
        if best and best_weights is None:
            best_weights = weights
        _atomic(self.folder / "model.safetensors", lambda p: save_file(weights, str(p)))
        if best:
            _atomic(self.folder / "best.safetensors", lambda p: save_file(weights, str(p)))
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": weights,
            "best_model": None if best_weights is None else _cpu(best_weights),
            "optimizer": optimizer.state_dict(),
            "trainer": dict(trainer_state),
            "rng": rng,
        }
        _atomic(self.folder / "trainer.pt", lambda p: _save_synced(state, p))

    def load(self, model, optimizer) -> dict:
        """Restore the weights and AdamW's state; return the loop's state, with the best weights
        under ``"best_model"`` and the random states under ``"rng"`` (None when not saved)."""
        state = torch.load(self.folder / "trainer.pt", weights_only=True)
        if state.get("format", 1) >= 2:
            model.load_state_dict(state["model"])
            best, rng = state["best_model"], state["rng"]
        else:  # format 1: weights beside it, global torch RNG only, best weights in best.safetensors
            model.load_state_dict(load_file(str(self.folder / "model.safetensors")))
            path = self.folder / "best.safetensors"
            best = load_file(str(path)) if path.is_file() else None
            torch.set_rng_state(state["rng"])
            rng = None
        optimizer.load_state_dict(state["optimizer"])
        return {**state["trainer"], "best_model": best, "rng": rng}

    def load_best(self, model) -> None:
        path = self.folder / "best.safetensors"
        if path.is_file():
            model.load_state_dict(load_file(str(path)))


def _cpu(weights: dict) -> dict:
    return {k: v.detach().contiguous().cpu().clone() for k, v in weights.items()}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_synced(obj, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text))


# ---------------------------------------------------------------- the loop


def train(
    model: torch.nn.Module,
    s: TrainSettings,
    sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Callable[[int], dict],
    log: Callable[[dict, int], None],
    ckpt: Checkpoint,
    items_per_batch: int,
    unit: str,
    val_key: str,
    resume: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    restore_rng: bool = True,
) -> dict:
    """Run the loop; returns the trainer state (step, best val metric, stop reason).

    ``evaluate(step)`` returns metrics including ``val_key`` (lower is better); the loop keeps
    the best weights and stops after ``patience`` evaluations without improvement.
    A KeyboardInterrupt (Ctrl-C, or SIGTERM as ``Terminated``) or any exception saves a checkpoint
    first, then propagates.
    ``clock`` drives the time budget; DDP ranks pass one shared clock so they stop together.
    ``restore_rng=False`` (DDP replicas, which resume from rank 0's checkpoint) reseeds the
    random states from ``seed + step`` instead of taking the checkpoint's.
    """
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=s.lr
    )
    state = {
        "step": 0,
        "best": math.inf,
        "best_step": 0,
        "bad_evals": 0,
        "elapsed": 0.0,
        "stop": "",
        "eval_pending": False,
    }
    gen = torch.Generator().manual_seed(s.seed)
    best_weights = None
    if resume and ckpt.exists():
        restored = ckpt.load(model, optimizer)
        best_weights, rng = restored.pop("best_model"), restored.pop("rng")
        state.update(restored)
        if rng is not None and restore_rng:
            set_rng_state(rng, gen)
        else:  # an older checkpoint, or a replica: deterministic, not the uninterrupted run's
            gen.manual_seed(s.seed + state["step"])
            if not restore_rng:
                torch.manual_seed(s.seed + state["step"])
        print(
            f"resuming at step {state['step']} of {s.steps}"
            + (" (its evaluation first)" if state["eval_pending"] else "")
            + f" from {ckpt.folder}",
            file=sys.stderr,
        )
    start = clock() - state["elapsed"]

    def progress() -> float:
        p = state["step"] / s.steps
        if s.time_budget_s:
            p = max(p, (clock() - start) / s.time_budget_s)
        return p

    def save(best: bool = False) -> None:
        state["elapsed"] = time.perf_counter() - start
        ckpt.save(model, optimizer, state, best=best, rng=rng_state(gen), best_weights=best_weights)

    bar = TrainBar(s.steps, s.time_budget_s, progress(), state["step"])  # over the budget's seconds when one is set
    window_t, window_items = time.perf_counter(), 0
    rewind = None  # random states when the running step / evaluation began: an interrupt returns there
    restore_sigterm = _sigterm_raises_terminated()
    try:
        while not state["stop"] and (state["eval_pending"] or (state["step"] < s.steps and progress() < 1.0)):
            if not state["eval_pending"]:
                rewind = _snapshot(gen, full=False)
                model.train()
                lr = lr_at(s, state["step"], progress())
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = sample_batch(gen)
                loss = loss_fn(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                with _DeferInterrupt():
                    optimizer.step()
                    state["step"] += 1
                    rewind = None
                    state["eval_pending"] = (
                        state["step"] % s.eval_every == 0 or state["step"] >= s.steps or progress() >= 1.0
                    )
                window_items += items_per_batch
                bar.advance(state["step"], progress())
                if state["step"] % 10 == 0:
                    now = time.perf_counter()
                    rate = window_items / (now - window_t)
                    window_t, window_items = now, 0
                    log({"train_loss": loss.item(), "lr": lr, f"{unit}_per_s": rate}, state["step"])
                    bar.set_postfix(loss=f"{loss.item():.4f}", **{f"{unit}/s": f"{rate:,.0f}"})
            if state["eval_pending"]:
                rewind = _snapshot(gen, full=False)
                metrics = evaluate(state["step"])
                log(metrics, state["step"])
                improved = metrics[val_key] < state["best"]
                with _DeferInterrupt():
                    if improved:
                        state.update(best=metrics[val_key], best_step=state["step"], bad_evals=0)
                        best_weights = _cpu(model.state_dict())
                    else:
                        state["bad_evals"] += 1
                    if state["bad_evals"] >= s.patience:
                        state["stop"] = f"early stop: no improvement in {s.patience} evaluations"
                    state["eval_pending"] = False
                    rewind = None
                save(best=improved)
                bar.write(f"step {state['step']}: {val_key} {metrics[val_key]:.4f} (best {state['best']:.4f})")
        if not state["stop"]:
            state["stop"] = "time budget reached" if state["step"] < s.steps else "steps done"
    except BaseException:
        if rewind is not None:
            _restore(rewind, gen)
        save()
        raise
    finally:
        restore_sigterm()
        bar.close()
    save()
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return state
