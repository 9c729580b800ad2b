"""The training loop, visible: AdamW, gradient clipping, warm-up + cosine schedule, periodic
evaluation, early stopping, checkpoints (safetensors + a weights-only state dict), resume.

The loop knows nothing about MLflow or the task: a job hands it a batch sampler, a loss, an
evaluation and a ``log`` callback.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from rnnops.training.progress import TrainBar


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


class Checkpoint:
    """Files in ``folder``: model.safetensors (latest), best.safetensors, trainer.pt, job.json.

    trainer.pt holds only tensors and plain values and is read with ``weights_only=True``.
    Each file is written to a temporary name and renamed, so a crash never leaves half a file.
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

    def save(self, model, optimizer, trainer_state: dict, best: bool = False) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        _atomic(self.folder / "model.safetensors", lambda p: save_file(weights, str(p)))
        if best:
            _atomic(self.folder / "best.safetensors", lambda p: save_file(weights, str(p)))
        state = {"optimizer": optimizer.state_dict(), "trainer": trainer_state, "rng": torch.get_rng_state()}
        _atomic(self.folder / "trainer.pt", lambda p: torch.save(state, p))

    def load(self, model, optimizer) -> dict:
        model.load_state_dict(load_file(str(self.folder / "model.safetensors")))
        state = torch.load(self.folder / "trainer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        return state["trainer"]

    def load_best(self, model) -> None:
        path = self.folder / "best.safetensors"
        if path.is_file():
            model.load_state_dict(load_file(str(path)))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def _atomic_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text))


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
) -> dict:
    """Run the loop; returns the trainer state (step, best val metric, stop reason).

    ``evaluate(step)`` returns metrics including ``val_key`` (lower is better); the loop keeps
    the best weights and stops after ``patience`` evaluations without improvement.
    A KeyboardInterrupt or any exception saves a checkpoint first, then propagates.
    ``clock`` drives the time budget; DDP ranks pass one shared clock so they stop together.
    """
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=s.lr
    )
    state = {"step": 0, "best": math.inf, "best_step": 0, "bad_evals": 0, "elapsed": 0.0, "stop": ""}
    if resume and ckpt.exists():
        state = ckpt.load(model, optimizer)
    gen = torch.Generator().manual_seed(s.seed + state["step"])
    start = clock() - state["elapsed"]

    def progress() -> float:
        p = state["step"] / s.steps
        if s.time_budget_s:
            p = max(p, (clock() - start) / s.time_budget_s)
        return p

    bar = TrainBar(s.steps, s.time_budget_s, progress(), state["step"])  # over the budget's seconds when one is set
    window_t, window_items = time.perf_counter(), 0
    try:
        while state["step"] < s.steps and progress() < 1.0:
            model.train()
            lr = lr_at(s, state["step"], progress())
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = sample_batch(gen)
            loss = loss_fn(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            state["step"] += 1
            window_items += items_per_batch
            bar.advance(state["step"], progress())
            if state["step"] % 10 == 0:
                now = time.perf_counter()
                rate = window_items / (now - window_t)
                window_t, window_items = now, 0
                log({"train_loss": loss.item(), "lr": lr, f"{unit}_per_s": rate}, state["step"])
                bar.set_postfix(loss=f"{loss.item():.4f}", **{f"{unit}/s": f"{rate:,.0f}"})
            done = state["step"] >= s.steps or progress() >= 1.0
            if state["step"] % s.eval_every == 0 or done:
                metrics = evaluate(state["step"])
                log(metrics, state["step"])
                improved = metrics[val_key] < state["best"]
                if improved:
                    state.update(best=metrics[val_key], best_step=state["step"], bad_evals=0)
                else:
                    state["bad_evals"] += 1
                state["elapsed"] = time.perf_counter() - start
                ckpt.save(model, optimizer, state, best=improved)
                bar.write(f"step {state['step']}: {val_key} {metrics[val_key]:.4f} (best {state['best']:.4f})")
                if state["bad_evals"] >= s.patience:
                    state["stop"] = f"early stop: no improvement in {s.patience} evaluations"
                    break
        else:
            state["stop"] = "time budget reached" if state["step"] < s.steps else "steps done"
    except BaseException:
        state["elapsed"] = time.perf_counter() - start
        ckpt.save(model, optimizer, state)
        raise
    finally:
        bar.close()
    state["elapsed"] = time.perf_counter() - start
    ckpt.save(model, optimizer, state)
    ckpt.load_best(model)
    return state

