"""Multi-process training with PyTorch DDP: ``rnnops train char|forecast ... --nproc N``.

One machine: ``--nproc N`` spawns N processes (``torch.multiprocessing``) that join one process
group on loopback. Several machines: start the same command under ``torchrun`` on each, which
sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; the command sees them and joins
instead of spawning::

    torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 \\
        --no-python rnnops train char --preset full          # and --node-rank 1 on the other machine

What changes with N processes (and only this; the job and the loop are the same):

- **Gradients averaged**: the model is wrapped in ``DistributedDataParallel`` for the loss only,
  so ``backward()`` all-reduces (averages) gradients and every rank takes the same optimizer step.
  ``--batch-size`` is per process: the effective batch is N x batch size (the lr is not scaled).
- **Different batches**: rank r samples with seed ``seed + r * RANK_SEED_STRIDE``; rank 0 keeps
  the single-process seed. Panels go further: rank r draws its windows from its own shard of the
  series (:func:`shard`: series index modulo N), so the ranks' batches never share a series.
- **Rank 0 is the run**: only rank 0 talks to MLflow, evaluates, prints and writes checkpoints;
  it shares the run id, each validation score (for early stopping) and its clock (for
  ``--time-budget`` and the lr schedule) so every rank stops at the same step.
- Backend: gloo (the training loop runs on CPU); nccl is the backend for CUDA tensors.
  Threads: each process gets ``CPUs // N`` intra-op threads.

Resuming (``--resume RUN --nproc N``) reads rank 0's checkpoint in every process: across
machines, ``RNNOPS_CHECKPOINTS`` must be on storage they share.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from rnnops import settings
from rnnops.errors import RnnopsError
from rnnops.training.trainer import Checkpoint, train

if TYPE_CHECKING:
    from rnnops.training.job_config import Job
    from rnnops.training.tasks import TrainingSetup

RANK_SEED_STRIDE = 1_000_003  # rank r's batch seed: seed + r * stride (a prime, past any step count)
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails the job


class Replicas:
    """This process's place in an initialised process group, and the few things ranks share."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0

    def share(self, value):
        """Rank 0's ``value`` (any picklable object), on every rank."""
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def share_float(self, value: float) -> float:
        t = torch.tensor([value if self.is_main else 0.0], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def clock(self) -> float:
        """Rank 0's ``perf_counter``: one clock for the time budget and the lr schedule."""
        return self.share_float(time.perf_counter())

    def wrap(self, setup: TrainingSetup, seed: int) -> TrainingSetup:
        """A job's setup (:class:`rnnops.training.tasks.TrainingSetup`) adapted to this rank.

        The loss runs through DDP (gradients averaged); rank 0 evaluates and shares the score the
        loop stops on; the other ranks report that shared score and log nothing.
        """
        ddp = torch.nn.parallel.DistributedDataParallel(setup.model)  # broadcasts rank 0's initial weights
        loss_fn, evaluate, val_key = setup.loss_fn, setup.evaluate, setup.val_key
        if not self.is_main:
            torch.manual_seed(seed + self.rank)  # own dropout masks

        def ddp_loss(_model, x, y):
            return loss_fn(ddp, x, y)

        def shared_evaluate(step: int) -> dict:
            if self.is_main:
                metrics = evaluate(step)
                self.share_float(metrics[val_key])
                return metrics
            return {val_key: self.share_float(0.0)}

        return replace(
            setup, loss_fn=ddp_loss, evaluate=shared_evaluate, items_per_batch=setup.items_per_batch * self.world_size
        )

    def follow(self, job: Job, setup: TrainingSetup, resume_run: str | None) -> str:
        """Train as a replica (rank > 0): same loop, own batches, no logging, no files written."""
        run_id = self.share(None)
        ckpt = ReplicaCheckpoint(settings.checkpoint_dir() / run_id)
        if resume_run and not ckpt.exists():
            raise RnnopsError(
                f"rank {self.rank}: no checkpoint for run {run_id} in {ckpt.folder}; "
                "across machines RNNOPS_CHECKPOINTS must be on shared storage"
            )
        s = replace(job.train, seed=job.train.seed + self.rank * RANK_SEED_STRIDE)
        train(
            setup.model,
            s,
            setup.sample_batch,
            setup.loss_fn,
            setup.evaluate,
            lambda m, step: None,
            ckpt,
            setup.items_per_batch,
            setup.unit,
            setup.val_key,
            resume=resume_run is not None,
            clock=self.clock,
            restore_rng=False,
        )  # rank 0's random states are not this rank's
        return run_id


class ReplicaCheckpoint(Checkpoint):
    """Rank 0 owns the checkpoint: a replica reads it to resume and never writes it."""

    def save_job(self, job: dict) -> None:
        pass

    def save(self, *args, **kwargs) -> None:
        pass

    def load_best(self, model) -> None:
        pass  # only rank 0's model is logged


def shard(series, rank: int, world_size: int):
    """The series (indices into a panel) that rank ``rank`` of ``world_size`` samples training
    windows from: index modulo world size, so the shards are disjoint, cover the panel, differ in
    size by one series at most, and mix long and short series alike (a panel sorted by length
    still gives every rank a fair share)."""
    import numpy as np

    series = np.asarray(series)
    return series[series % world_size == rank]


def current() -> Replicas | None:
    """The process group this process trains in, or None when training alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Replicas()
    return None


def _launched_as_a_rank() -> bool:
    """torchrun (or another launcher) started this process as one rank of several."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(job: Job, experiment: str | None = None, resume_run: str | None = None, nproc: int = 1) -> None:
    """Run a training job in 1 process, N spawned processes, or as one rank under torchrun."""
    from rnnops.training.jobs import run_job

    if _launched_as_a_rank():
        if nproc > 1:
            raise RnnopsError(
                "started by torchrun, which already made the processes: drop --nproc (use torchrun's --nproc-per-node)"
            )
        _join()
        try:
            run_job(job, experiment, resume_run)
        finally:
            dist.destroy_process_group()
        return
    if nproc <= 1:
        run_job(job, experiment, resume_run)
        return
    import torch.multiprocessing as mp

    port = _free_port()
    print(f"training in {nproc} processes (DDP, {_backend()}, 127.0.0.1:{port})", file=sys.stderr)
    try:
        mp.start_processes(_worker, args=(nproc, port, job, experiment, resume_run), nprocs=nproc, start_method="spawn")
    except mp.ProcessExitedException as exc:
        raise RnnopsError(
            f"training process {exc.error_index} exited with code {exc.exit_code}; its error is printed above"
        ) from None
    except mp.ProcessRaisedException as exc:
        raise RnnopsError(f"a training process failed:\n{exc}") from None


def _worker(rank: int, world_size: int, port: int, job: Job, experiment: str | None, resume_run: str | None) -> None:
    """Entry point of a spawned rank."""
    from rnnops.training.jobs import run_job

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    _join()
    try:
        run_job(job, experiment, resume_run)
    except RnnopsError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.__stderr__)
        sys.exit(2)
    finally:
        dist.destroy_process_group()


def _join() -> None:
    """Join the process group described by the environment (``env://``)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    if int(os.environ.get("RANK", "0")):
        _quiet()
    dist.init_process_group(_backend(), init_method="env://", timeout=TIMEOUT)


def _backend() -> str:
    # The training loop keeps the model on the CPU, so gloo; nccl only works on CUDA tensors.
    return "gloo"


def _quiet() -> None:
    """Replicas print nothing but their errors: rank 0 shows the progress bar and the summary."""
    sys.stdout = sys.stderr = open(os.devnull, "w")
    sys.excepthook = lambda *exc: traceback.print_exception(*exc, file=sys.__stderr__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # `torchrun ... -m rnnops.training.distributed char --preset full`
    from rnnops.cli import main

    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
