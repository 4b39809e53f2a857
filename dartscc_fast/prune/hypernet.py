"""The pruning hypernetwork: edge logits as a piecewise-linear function of the scalar lambda.

``logits(lambda) = a0 + sum_j hat_j(lambda / lambda_max) A_j`` with hat functions on
``knots`` evenly spaced points of [0, 1] (as DARTS-CC's piecewise-linear
hypernetwork, over one scalar instead of the simplex); lambda above
``lambda_max`` is clamped to it. Edge e is kept with probability
``sigmoid(logits_e)``; the deterministic pruned network keeps ``logits_e > 0``.
"""
from __future__ import annotations

from typing import Dict, Union

import torch
from torch import Tensor, nn

__all__ = ["LambdaHypernet", "check_lambda"]


def check_lambda(lam: Union[float, Tensor], what: str = "lambda") -> None:
    """Lambda is a trade-off weight on time: it must be finite and >= 0."""
    t = torch.as_tensor(lam, dtype=torch.float64)
    if not torch.isfinite(t).all() or (t < 0).any():
        bad = t[(~torch.isfinite(t)) | (t < 0)].reshape(-1)[0].item()
        raise ValueError(f"{what} must be finite and >= 0 (it weighs the time penalty), got {bad:g}")


class LambdaHypernet(nn.Module):
    """``forward(lam)``: lam ``[]`` -> logits ``[E]``; lam ``[N]`` -> ``[N, E]``."""

    def __init__(self, num_edges: int, lambda_max: float, knots: int = 5):
        super().__init__()
        if num_edges < 1:
            raise ValueError(f"LambdaHypernet: num_edges must be >= 1, got {num_edges}")
        if knots < 2:
            raise ValueError(f"LambdaHypernet: knots must be >= 2, got {knots}")
        if not lambda_max > 0:
            raise ValueError(f"LambdaHypernet: lambda_max must be > 0, got {lambda_max}")
        self.num_edges, self.lambda_max, self.knots = int(num_edges), float(lambda_max), int(knots)
        self.a0 = nn.Parameter(torch.zeros(self.num_edges))
        self.A = nn.Parameter(torch.zeros(self.knots, self.num_edges))

    def config(self) -> Dict:
        return {"num_edges": self.num_edges, "lambda_max": self.lambda_max, "knots": self.knots}

    def features(self, lam: Tensor) -> Tensor:
        u = (lam / self.lambda_max).clamp(0, 1)
        grid = torch.linspace(0, 1, self.knots, dtype=u.dtype)
        return (1 - (u[..., None] - grid).abs() * (self.knots - 1)).clamp_min(0)

    def forward(self, lam: Union[float, Tensor]) -> Tensor:
        lam = torch.as_tensor(lam, dtype=self.a0.dtype)
        check_lambda(lam)
        if lam.dim() > 1:
            raise ValueError(f"lambda must be a scalar or a vector [N], got shape {list(lam.shape)}")
        return self.a0 + self.features(lam) @ self.A
