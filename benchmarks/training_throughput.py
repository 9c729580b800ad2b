"""Training throughput: our training loops vs a plain reference loop of the seed-tutorial kind.

Same model size, same batch, same optimizer steps, same threads; only the loop differs.

- **char** (Tiny Shakespeare, the ``quick`` preset: LSTM 1x384, batch 32, 100 characters):
  ours is ``rnnops train char``'s own loop (``training.trainer.train`` with the job's
  ``sample_batch``: one tensor gather for the whole batch, an embedding layer, AdamW, grad
  clipping); the reference is the char-RNN tutorial loop: the batch sliced from the text with a
  Python loop, characters looked up in a dict, inputs one-hot encoded into an ``LSTM(vocab, 384)``.
  Reported in characters/s.
- **forecast** (ETTh1, the ``quick`` preset: GRU 1x64, lookback 96, horizon 96, batch 32): ours
  is ``rnnops train forecast``'s loop (windows gathered with one index tensor, RevIN + linear
  skip inside the model); the reference slices each window with Python and ``np.stack`` into a
  ``GRU(7, 64)`` + linear head on pre-z-scored data. Reported in windows/s.

Each loop runs ``--steps`` optimizer steps after a short warm-up, ``--reps`` times interleaved
(ours, reference, ours, ...); the table shows medians. Evaluation, logging and checkpoints are
left out of both (they are not the loop's speed).

``--cells`` instead compares the recurrent cells themselves: a char model per cell at a similar
parameter count (:data:`CELL_CONFIGS`), batch 32 x sequence 256, forward + backward + AdamW on
random tokens, interleaved reps, chars/s medians and the ratio to the LSTM, beside each cell's
roofline (see :func:`cells_throughput`). It prints the share of the CPUs other processes used
while it ran (:class:`OthersCPU`): on a shared machine the ratios are the figure to read.

    python benchmarks/training_throughput.py --quick --json out.json
    python benchmarks/training_throughput.py --cells lstm,mingru,minlstm,mlstm --reps 3
    python benchmarks/training_throughput.py --cells lstm,mingru --reps 5 --steps 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's progress bar: not part of the loop's speed
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


class _NoCheckpoint:
    """The trainer's checkpoint interface, doing nothing: saving is not the loop's speed."""

    def exists(self) -> bool:
        return False

    def save(self, *args, **kw) -> None:
        pass

    def load_best(self, model) -> None:
        pass


def _ours(job, steps: int):
    """A closure running ``steps`` steps of our trainer on the job's setup; returns seconds."""
    from dataclasses import replace

    from rnnops.training.tasks import setup as task_setup
    from rnnops.training.trainer import train

    setup = task_setup(job)
    val_key = setup.val_key

    def go(n: int) -> float:
        s = replace(job.train, steps=n, eval_every=10**9, time_budget_s=0.0, patience=10**9)
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's "step N: ..." lines are not results
            train(
                setup.model,
                s,
                setup.sample_batch,
                setup.loss_fn,
                lambda step: {val_key: 0.0},
                lambda m, step: None,
                _NoCheckpoint(),
                setup.items_per_batch,
                setup.unit,
                val_key,
            )
        return time.perf_counter() - t

    return go, setup.items_per_batch


def ours_char(steps: int):
    from rnnops.training.job_config import to_dict
    from rnnops.training.jobs import char_job

    job = char_job("tinyshakespeare", "lstm", "quick", {})
    return _ours(job, steps), to_dict(job)


def ours_forecast(steps: int):
    from rnnops.training.job_config import to_dict
    from rnnops.training.jobs import forecast_job

    job = forecast_job("etth1", "gru", "quick", {})
    return _ours(job, steps), to_dict(job)


def reference_char(job: dict):
    """The tutorial loop: Python slicing, dict lookups, one-hot inputs."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from rnnops.training.data import resolve_source

    path, _ = resolve_source("tinyshakespeare", "text")
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = text[: int(0.9 * len(text))]
    V, H, T, B = len(chars), job["model"]["hidden_size"], job["seq_len"], job["train"]["batch_size"]

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(V, H, job["model"]["num_layers"], batch_first=True)
            self.fc = nn.Linear(H, V)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out)

    model = CharRNN()
    opt = torch.optim.Adam(model.parameters(), lr=job["train"]["lr"])
    rng = random.Random(0)

    def go(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            xs, ys = [], []
            for _ in range(B):
                i = rng.randint(0, len(data) - T - 2)
                chunk = data[i : i + T + 1]
                xs.append([stoi[c] for c in chunk[:-1]])
                ys.append([stoi[c] for c in chunk[1:]])
            x = F.one_hot(torch.tensor(xs), V).float()
            y = torch.tensor(ys)
            loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return time.perf_counter() - t

    return go, B * T


def reference_forecast(job: dict):
    """The tutorial loop: z-scored numpy array, windows sliced in Python and stacked per batch."""
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from rnnops.training.data import resolve_source

    path, _ = resolve_source("etth1", "series")
    values = pd.read_csv(path).drop(columns=["date"]).to_numpy(np.float32)
    train = values[:8640]
    data = (values - train.mean(0)) / train.std(0)
    L, Hz, B = job["lookback"], job["horizon"], job["train"]["batch_size"]
    Fn, hidden = data.shape[1], job["model"]["hidden_size"]

    class GRUForecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(Fn, hidden, batch_first=True)
            self.fc = nn.Linear(hidden, Hz * Fn)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out[:, -1]).view(-1, Hz, Fn)

    model = GRUForecaster()
    opt = torch.optim.Adam(model.parameters(), lr=job["train"]["lr"])
    rng = np.random.default_rng(0)

    def go(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            idx = rng.integers(0, 8640 - L - Hz, B)
            x = torch.tensor(np.stack([data[i : i + L] for i in idx]))
            y = torch.tensor(np.stack([data[i + L : i + L + Hz] for i in idx]))
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return time.perf_counter() - t

    return go, B


def measure(pairs: dict, steps: int, reps: int, warmup: int) -> dict:
    """Interleaved reps of every loop; items/s medians."""
    rates = {k: [] for k in pairs}
    for go, _ in pairs.values():
        go(warmup)
    for _ in range(reps):
        for name, (go, items) in pairs.items():
            rates[name].append(items * steps / go(steps))
    return {k: {"median": C.median(v), "runs": v} for k, v in rates.items()}


def run(quick: bool, steps: dict | None = None, reps: int | None = None) -> dict:
    import torch

    torch.set_num_threads(C.cpus())
    steps = steps or ({"char": 8, "forecast": 40} if quick else {"char": 60, "forecast": 300})
    reps = reps or (2 if quick else 5)
    out = {"quick": quick, "threads": torch.get_num_threads(), "steps": steps, "reps": reps, "tasks": {}}
    (go_c, items_c), job_c = ours_char(steps["char"])
    r = measure({"ours": (go_c, items_c), "reference": reference_char(job_c)}, steps["char"], reps, warmup=2)
    out["tasks"]["char"] = {
        "unit": "chars/s",
        "model": f"LSTM {job_c['model']['num_layers']}x{job_c['model']['hidden_size']}",
        "batch": job_c["train"]["batch_size"],
        "seq_len": job_c["seq_len"],
        **r,
    }
    print(f"char: ours {r['ours']['median']:,.0f} chars/s, reference {r['reference']['median']:,.0f}", file=sys.stderr)
    (go_f, items_f), job_f = ours_forecast(steps["forecast"])
    r = measure({"ours": (go_f, items_f), "reference": reference_forecast(job_f)}, steps["forecast"], reps, warmup=3)
    out["tasks"]["forecast"] = {
        "unit": "windows/s",
        "model": f"GRU 1x{job_f['model']['hidden_size']}",
        "batch": job_f["train"]["batch_size"],
        "seq_len": job_f["lookback"],
        **r,
    }
    print(
        f"forecast: ours {r['ours']['median']:,.0f} windows/s, reference {r['reference']['median']:,.0f}",
        file=sys.stderr,
    )
    return out


# Similar parameter counts (about 1M): the LSTM as the quick preset's width with a wide embedding.
CELL_CONFIGS = {
    "lstm": dict(hidden_size=384, num_layers=1, embed_dim=384),
    "gru": dict(hidden_size=448, num_layers=1, embed_dim=384),
    "mingru": dict(hidden_size=384, num_layers=3, embed_dim=384, ff_mult=0.0),
    "minlstm": dict(hidden_size=320, num_layers=3, embed_dim=320, ff_mult=0.0),
    "mlstm": dict(hidden_size=256, num_layers=3, embed_dim=256, ff_mult=0.0, heads=4),
}


class OthersCPU:
    """The share of the machine's CPU time that other processes used inside a ``with`` block:
    all busy time (``/proc/stat``) minus this process's own (user + system). None off Linux.
    A load average counts this benchmark's own threads too; this does not."""

    def _now(self):
        try:
            v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except OSError:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        own = os.times()
        return (sum(v) - v[3] - v[4]) / tick, sum(v) / tick, own.user + own.system

    def __enter__(self):
        self.start, self.share = self._now(), None
        return self

    def __exit__(self, *exc):
        end = self._now()
        if self.start and end and end[1] > self.start[1]:
            busy, total, own = (e - s for e, s in zip(end, self.start))
            self.share = max(0.0, (busy - own) / total)


def torch_matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large float32 matmul in torch, the BLAS the training runs on (best of ``reps``,
    into a preallocated output: a fresh 16 MB result would time the page faults too)."""
    import torch

    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def training_flops_per_char(model, cell: str, cfg: dict) -> float:
    """About 6 x N FLOPs per character for forward + backward (N: the parameters that multiply,
    so the embedding table, a lookup, is left out), plus the state update of a matrix-memory cell:
    mLSTM per layer and head ``C = f C + i k v^T`` and ``h = C q`` cost about 5 d_k d_v forward,
    three times that with the backward pass."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    flops = 6.0 * n
    if cell == "mlstm":
        heads = cfg["heads"]
        d = cfg["hidden_size"] // heads
        flops += 3 * 5 * heads * d * d * cfg["num_layers"]
    return flops


def cells_throughput(cells: list[str], batch: int = 32, seq: int = 256, steps: int = 2, reps: int = 3) -> dict:
    """chars/s of forward + backward + AdamW per cell (random tokens, vocab 65), interleaved reps,
    beside each cell's roofline: the chars/s at which 6 x N FLOPs per char (plus the matrix
    state's) run at the machine's measured matmul FLOP/s."""
    import torch
    import torch.nn.functional as F

    from rnnops.training.models import CharModel, CharModelConfig

    torch.set_num_threads(C.cpus())
    load_start = round(os.getloadavg()[0], 2)
    peak = torch_matmul_flops()
    print(
        f"matmul: {peak / 1e9:.1f} GFLOP/s (torch float32, 2048^2, {torch.get_num_threads()} threads); "
        f"load {load_start}",
        file=sys.stderr,
    )
    runs, flops_per_char = {}, {}
    for cell in cells:
        torch.manual_seed(0)
        model = CharModel(CharModelConfig(vocab_size=65, cell=cell, **CELL_CONFIGS[cell]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x, y = torch.randint(0, 65, (batch, seq)), torch.randint(0, 65, (batch, seq))

        def go(n: int, model=model, opt=opt, x=x, y=y) -> float:
            t = time.perf_counter()
            for _ in range(n):
                logits, _ = model(x)
                loss = F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            return time.perf_counter() - t

        go(1)  # warm-up (compiles the fused kernels on first use)
        runs[cell] = (go, sum(p.numel() for p in model.parameters()))
        flops_per_char[cell] = training_flops_per_char(model, cell, CELL_CONFIGS[cell])
    rates = {c: [] for c in cells}
    with OthersCPU() as others:
        for _ in range(reps):
            for cell, (go, _) in runs.items():
                rates[cell].append(batch * seq * steps / go(steps))
    # measured again at the end: the machine's rate is the better of the two (a neighbour's
    # burst during one measurement would otherwise flatter every cell's share of the roofline)
    peak = max(peak, torch_matmul_flops())
    base = C.median(rates["lstm"]) if "lstm" in rates else None
    out = {
        "batch": batch,
        "seq_len": seq,
        "steps": steps,
        "reps": reps,
        "threads": torch.get_num_threads(),
        "matmul_flops": peak,
        "machine": C.machine(),
        "load_avg_1m_start": load_start,
        "others_cpu_share": others.share,
        "cells": {},
    }
    for cell in cells:
        med = C.median(rates[cell])
        roofline = peak / flops_per_char[cell]
        out["cells"][cell] = {
            "config": CELL_CONFIGS[cell],
            "params": runs[cell][1],
            "chars_per_s": med,
            "runs": rates[cell],
            "vs_lstm": med / base if base else None,
            "flops_per_char": flops_per_char[cell],
            "roofline_chars_per_s": roofline,
            "of_roofline": med / roofline,
        }
        print(
            f"{cell}: {runs[cell][1] / 1e6:.2f}M params, {med:,.0f} chars/s, {med / roofline:.0%} of the roofline"
            + (f" ({med / base:.2f}x lstm)" if base else ""),
            file=sys.stderr,
        )
    return out


def markdown(res: dict) -> str:
    rows = []
    for task, r in res["tasks"].items():
        rows.append(
            [
                task,
                r["model"],
                r["batch"],
                r["seq_len"],
                r["unit"],
                C.fmt(r["ours"]["median"]),
                C.fmt(r["reference"]["median"]),
                C.ratio(r["ours"]["median"], r["reference"]["median"]),
            ]
        )
    return "\n".join(
        [
            f"{res['threads']} torch threads; {res['steps']['char']} (char) / {res['steps']['forecast']} (forecast) optimizer "
            f"steps per run, median of {res['reps']} interleaved runs" + (" (--quick)" if res["quick"] else "") + ".",
            "",
            C.md_table(
                ["task", "model", "batch", "sequence", "unit", "rnnops loop", "reference loop", "rnnops / reference"],
                rows,
            ),
            "",
            "The reference loops are the seed tutorials' kind: one-hot inputs (char) and batches sliced with Python per "
            "step; same sizes, same optimizer steps, same threads.",
        ]
    )


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(res["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        r = res["tasks"][task]
        vals = [r["ours"]["median"], r["reference"]["median"]]
        ax.bar(["rnnops loop", "reference loop"], vals, color=["tab:orange", "tab:gray"])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{task}: {r['model']}, batch {r['batch']} ({r['unit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, 2 runs each")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="--cells: optimizer steps per run (default 2)")
    ap.add_argument("--cells", metavar="LIST", help=f"compare cells instead ({','.join(CELL_CONFIGS)}): batch 32 x 256")
    args = ap.parse_args(argv)
    if args.cells:
        res = cells_throughput(
            [c.strip() for c in args.cells.split(",") if c.strip()], steps=args.steps or 2, reps=args.reps or 3
        )
        rows = [
            [
                c,
                C.fmt(r["params"]),
                C.fmt(r["chars_per_s"]),
                C.fmt(r["roofline_chars_per_s"]),
                f"{r['of_roofline']:.0%}",
                f"{r['vs_lstm']:.2f}x" if r["vs_lstm"] else "-",
            ]
            for c, r in res["cells"].items()
        ]
        print(
            f"matmul {res['matmul_flops'] / 1e9:.1f} GFLOP/s; batch {res['batch']} x {res['seq_len']}, "
            f"median of {res['reps']} interleaved runs of {res['steps']} steps; other processes used "
            + (f"{res['others_cpu_share']:.0%}" if res["others_cpu_share"] is not None else "?")
            + f" of the {res['machine']['cpus']} CPUs meanwhile (load average {res['load_avg_1m_start']} at the "
            f"start, {res['machine']['load_avg_1m']} at the end, this run's threads included)\n"
        )
        print(C.md_table(["cell", "parameters", "chars/s", "roofline chars/s", "of roofline", "vs LSTM"], rows))
        C.write_json(args.json, res)
        return
    if not os.environ.get("RNNOPS_DATA_DIR") and (C.REPO.parent / "shared" / "data").is_dir():
        os.environ["RNNOPS_DATA_DIR"] = str(C.REPO.parent / "shared" / "data")
    res = run(args.quick, reps=args.reps)
    print(markdown(res))
    C.write_json(args.json, res)


if __name__ == "__main__":
    main()
