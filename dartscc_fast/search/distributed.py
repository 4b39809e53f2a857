"""Processes: the process group under torchrun, the run directory's lock shared by the ranks, and
the per-(seed, epoch, rank) random streams and batch orders."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch
import torch.distributed as dist

from dartscc_fast.search.config import SearchConfig
from dartscc_fast.search.result import CHECKPOINT
from dartscc_fast.search.rundir import claim_run_dir


def dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), so (seed, epoch, rank) streams never overlap."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_loader(dataset, cfg: SearchConfig, epoch: int, rank: int, world: int, salt: int):
    """The batches of one epoch: a seeded permutation, this rank's share, full batches only."""
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed_for(cfg.seed, salt) & 0x7FFFFFFF, drop_last=True)
    sampler.set_epoch(epoch)
    bs = min(cfg.batch_size, max(len(sampler), 1))
    return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True)


def claim(out: Path, resume: bool, force: bool, rank: int, world: int):
    """Rank 0 locks and checks ``out``; every rank gets its verdict (so none waits on a rank that failed)."""
    lock, err = None, None
    if rank == 0:
        try:
            lock = claim_run_dir(out, resume=resume, force=force, checkpoint=CHECKPOINT)
        except ValueError as e:
            err = e
    if world > 1:
        box = [None if err is None else str(err)]
        dist.broadcast_object_list(box, 0)
        if box[0] is not None and err is None:
            err = ValueError(box[0])
    if err is not None:
        raise err
    return lock if lock is not None else _NoLock()


class _NoLock:
    def release(self) -> None:
        pass
