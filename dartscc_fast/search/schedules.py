"""What changes over a search: the Gumbel temperature, the weights' learning rate and the strength draws."""
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
