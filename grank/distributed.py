"""Multi-process training: ``torchrun --nproc-per-node N -m grank train ...``.

torch DistributedDataParallel (DDP) over gloo on CPUs, NCCL on CUDA devices (rank r of a node
on ``cuda:LOCAL_RANK``). One process, ``python -m grank train`` or ``torchrun`` with one
process, never touches this module's collectives: that path trains exactly as before.

How a multi-process run stays the same training task as a one-process run:

- Sampling happens once. Every rank draws the same epoch samples from the same seed and takes
  its own contiguous, disjoint part of each GLOBAL batch (``local_rows``). The global batch
  stays ``train.batch_size`` (each rank gets ``batch_size / N`` windows), so learning rate,
  warm-up, steps per epoch and the schedule mean the same at any N. A batch size not divisible
  by N is refused.
- Gradients are synchronised only for work done through the DDP wrapper's ``forward``.
  ``grank.train.losses(model, batch, cfg)`` calls the Generator, the item tower and the Ranker
  directly, so the wrapped module is ``TrainingTask``, whose ``forward`` IS the training loss:
  every parameter the loss reads registers its gradient hook with DDP's reducer.
- A parameter may get no gradient on one rank in one step: the Ranker trains only on windows
  whose newest slot holds a target and may get no row at all, and a rank may hold no row of a
  short last batch. ``find_unused_parameters=True`` lets DDP traverse each step's autograd graph
  and reduce such parameters with a zero gradient instead of waiting for them forever. (A
  static graph would assume the same parameters every step, which an empty Ranker step breaks.)
- The last global batch of an epoch may be shorter than ``batch_size``: each rank's loss is a
  mean over its own rows, and DDP averages gradients over ranks, so each rank scales its loss
  by ``N * its rows / global rows`` (1 for an even split). A rank left with no row computes the
  loss of a stand-in row at weight 0: it must still run forward and backward, because every
  rank takes part in every gradient all-reduce.
- Randomness inside the loss (next-item slots, in-batch and hard negatives, dropout) must
  differ between ranks, or N ranks would draw the same negatives for different windows. After
  the model is built (the same seed on every rank; DDP also broadcasts rank 0's weights), each
  rank seeds torch with ``rank_seed(seed, epoch, rank)`` at the start of every epoch, so a
  resumed run draws what an uninterrupted one would, without storing N generator states.
- Buffers (popularity counts, item features, the blend weights) never change while training,
  so they are not broadcast before every step (``forward_sync_buffers=False``).
- Rank 0 alone validates, keeps the best epoch, writes the checkpoints (the unwrapped
  ``GRank``'s state dict, so they load and export like a one-process checkpoint), fits the
  blend, writes train.json, prints and shows the progress bar; the others wait at a barrier.
  Logged losses are means over every rank's rows (``merge_sums``). On resume every rank reads
  last.pt (across several machines ``--out`` must be on a shared file system).

In-batch negatives of the auxiliary tokens come from the rank's own ``batch_size / N`` windows,
so at large N each window sees fewer of them (``train.aux_negatives`` is capped by the rows a
rank holds).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .cli import InputError

BACKENDS = ("auto", "gloo", "nccl")
# Rank 0 validates, saves and (after the last epoch) fits the blend while the others wait at a
# barrier: validating a large data set on one CPU thread takes minutes, far from this limit.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes (``local_rank`` on its
    machine), the collective ``backend`` ("gloo", "nccl"; None for one process)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        """The process that evaluates, writes and prints."""
        return self.rank == 0


SINGLE = World()


def from_env() -> World:
    """The world torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); one process when they are absent."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return SINGLE
    size = int(env["WORLD_SIZE"])
    return World(rank=int(env.get("RANK", 0)), size=size, local_rank=int(env.get("LOCAL_RANK", 0)),
                 local_size=int(env.get("LOCAL_WORLD_SIZE", size)))


def choose(world: World, device: str = "cpu", backend: str = "auto") -> tuple[World, str]:
    """Check that ``world`` can train on ``device`` with ``backend`` ("auto": NCCL on CUDA,
    gloo on CPU) and return (the world with its backend, this rank's device: ``cuda`` becomes
    ``cuda:LOCAL_RANK``). Raises ``InputError`` naming the fix; starts nothing."""
    if backend not in BACKENDS:
        raise InputError(f"--backend: one of {', '.join(BACKENDS)}, got {backend!r}")
    cuda = torch.device(device).type == "cuda"
    if backend == "nccl" and not cuda:
        raise InputError(f"--backend nccl needs CUDA devices, and this run trains on {device}: "
                         "pass --device cuda, or --backend gloo (or auto) to train on CPUs")
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise InputError("--backend nccl: this torch build or machine has no CUDA/NCCL "
                         f"(torch {torch.__version__}); use --backend gloo")
    if world.size == 1:
        return world, device
    if cuda:
        if torch.device(device).index is not None:
            raise InputError(f"--device {device}: under torchrun each process trains on cuda:LOCAL_RANK; "
                             "pass --device cuda")
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < world.local_size:
            raise InputError(f"--device cuda with {world.local_size} processes on this machine, but it has "
                             f"{have} CUDA device(s): run torchrun --nproc-per-node {have or 1}"
                             + ("" if have else " or train on --device cpu"))
        device = f"cuda:{world.local_rank}"
    chosen = backend if backend != "auto" else ("nccl" if cuda else "gloo")
    return World(world.rank, world.size, world.local_rank, world.local_size, chosen), device


def start(world: World, device: str) -> None:
    """Join the process group of ``world`` (after ``choose``); nothing for one process."""
    if world.size == 1:
        return
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))  # NCCL collectives run on the current device
    dist.init_process_group(world.backend, timeout=TIMEOUT,
                            device_id=torch.device(device) if world.backend == "nccl" else None)


def stop(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first, the others after it: a data set built into the cache on
    first use is written by one process and then read by the rest."""
    if not world.main:
        barrier(world)
    yield
    if world.main:
        barrier(world)


def local_batch_size(batch_size: int, world: World) -> int:
    """``train.batch_size`` is the GLOBAL batch: each of N ranks trains on batch_size / N."""
    if batch_size % world.size:
        raise InputError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                         f"({world.size}): it is the global batch, split evenly over them; pass e.g. "
                         f"--set train.batch_size={max(world.size, batch_size // world.size * world.size)}")
    return batch_size // world.size


def local_rows(rows: int, world: World) -> tuple[slice, float]:
    """This rank's part of a global batch of ``rows`` windows: (slice of it, loss weight).

    Ranks take contiguous, disjoint slices that together cover the batch (sizes differ by at
    most one). The weight makes DDP's mean of the ranks' gradients the gradient of the mean
    over the global batch: N x this rank's rows / rows (1 for an even split). A rank with no
    rows gets row 0 at weight 0 (see the module doc)."""
    a, b = world.rank * rows // world.size, (world.rank + 1) * rows // world.size
    if a == b:
        return slice(0, 1), 0.0
    return slice(a, b), world.size * (b - a) / rows


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``rank`` in ``epoch`` of a run seeded ``seed``: distinct per rank, and
    a function of the epoch so that a resumed run draws what the uninterrupted one drew."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class TrainingTask(nn.Module):
    """The module DDP wraps: ``forward(batch)`` is the training loss of ``model`` (the dict of
    ``loss_fn(model, batch, cfg)``: its parts and ``total``). The loss reaches the networks'
    submodules directly, so wrapping ``GRank`` itself would run none of it through DDP."""

    def __init__(self, model: nn.Module, cfg, loss_fn):
        super().__init__()
        self.model, self.cfg, self.loss_fn = model, cfg, loss_fn

    def forward(self, batch: dict) -> dict:
        return self.loss_fn(self.model, batch, self.cfg)


def wrap(model: nn.Module, cfg, loss_fn, world: World, device: str) -> nn.Module:
    """``TrainingTask(model)`` in DDP (rank 0's weights broadcast to every rank now)."""
    task = TrainingTask(model, cfg, loss_fn)
    dev = torch.device(device)
    return nn.parallel.DistributedDataParallel(
        task, device_ids=[dev] if dev.type == "cuda" else None,
        find_unused_parameters=True, forward_sync_buffers=False)


def merge_sums(sums: dict, rows: int, world: World) -> tuple[dict, int]:
    """Every rank's (row-weighted loss sums, rows) added up, on every rank: the epoch's losses
    are means over the global batch rows. Once per epoch, so a pickled gather is cheap."""
    if world.size == 1:
        return sums, rows
    parts = [None] * world.size
    dist.all_gather_object(parts, (sums, rows))
    total: dict = {}
    for s, _ in parts:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + v
    return total, sum(r for _, r in parts)
