"""What changes over a search: the Gumbel temperature, the weights' learning rate, the strength draws and the
dropout of parameter-free candidates."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from dartscc_fast.search.config import SearchConfig


def draw_strength(cfg: SearchConfig, gen: torch.Generator, n: int) -> Optional[Tensor]:
    """The strengths t of one step, drawn like S (once per batch, or ``[n]`` per sample): 0 with probability
    ``strength_zero_share``, else uniform on [0, 1]; None for a search without the strength axis."""
    if not cfg.strength:
        return None
    shape = (n,) if cfg.per_sample else ()
    t = torch.rand(shape, generator=gen)
    if cfg.strength_zero_share > 0:
        t = torch.where(torch.rand(shape, generator=gen) < cfg.strength_zero_share, torch.zeros_like(t), t)
    return t


def temperature(cfg: SearchConfig, step: int, total: int) -> float:
    """The Gumbel temperature at `step` of `total`: tau_start -> tau_end, linear (or geometric)."""
    frac = step / max(total - 1, 1)
    if cfg.tau_schedule == "linear":
        return cfg.tau_start + (cfg.tau_end - cfg.tau_start) * frac
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac


def cosine_lr(cfg: SearchConfig, step: int, total: int) -> float:
    """The weights' learning rate at ``step`` of ``total``: cosine from ``lr_w`` down to ``lr_w_min``."""
    return cfg.lr_w_min + 0.5 * (cfg.lr_w - cfg.lr_w_min) * (1 + math.cos(math.pi * step / total))


#: P-DARTS's decay of the dropout rate per architecture epoch, ``exp(-FREE_OP_DECAY * k)``.
FREE_OP_DECAY = 0.2


def free_op_dropout_at(cfg: SearchConfig, epoch: int) -> float:
    """The dropout rate of drawn parameter-free candidates in ``epoch``, as P-DARTS schedules it: during the
    weight warm-up ``p (epochs - epoch - 1) / epochs``, then ``p exp(-0.2 k)`` in the k-th search epoch."""
    p = cfg.free_op_dropout
    if epoch < cfg.warmup_epochs:
        return p * (cfg.epochs - epoch - 1) / cfg.epochs
    return p * math.exp(-FREE_OP_DECAY * (epoch - cfg.warmup_epochs))
