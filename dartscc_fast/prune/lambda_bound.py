"""Theorem 1 of seed 000: the largest useful trade-off, ``Lambda = (L_inf - L_sup) / (T^T 1)``.

How this module reads the theorem (the seed's draft is loose about it):

- ``L_inf = inf_p (1/n) sum_i l(p, y_i)`` over constant predictions p: for the
  cross-entropy it is the entropy of the validation labels' frequencies (the
  best constant is the frequency vector itself), in nats.
- The theorem's hypothesis is ``L_inf > L_sup``, so ``Lambda > 0`` exactly when
  it holds; the numerator is the margin by which the worst valid network still
  beats the best constant. That is the sign implemented: never
  ``L_sup - L_inf``.
- Gamma_valid, the "unbroken" gammas. On a ResNet every gamma over the
  prunable edges keeps the graph connected (a skipped branch leaves its
  identity shortcut), yet a pretrained network stripped of most blocks can do
  worse than a constant: its cross-entropy is unbounded, so the hypothesis
  would fail for reasons that have nothing to do with the graph. The proof
  only uses one property of a broken graph: its prediction carries nothing
  of x, so its loss is at least ``L_inf``. We therefore count as valid the
  explored gammas whose validation loss beats the best constant,
  ``L(gamma) < L_inf``, and report the others as "no better than constant".
  ``L_sup`` is the worst loss among the valid ones, so ``Lambda > 0`` whenever
  any explored gamma (all-on, for any useful pretrained model) beats a constant.
- The same proof holds for any single valid gamma', giving
  ``(L_inf - L(gamma')) / T^T 1``; the largest such bound, with the best valid
  loss ``L_min``, is reported as ``lambda_best`` (the seed's sup form is the
  conservative one that needs no knowledge of which gamma is reached).
- In practice the sup form is fragile: ``L_sup`` is the valid gamma whose loss
  is nearest ``L_inf``, so Lambda can be arbitrarily close to 0 (0.003 on the
  demo's Fashion-MNIST ResNet, where accuracy holds up to lambda ~ 1.3 and
  collapses near ``lambda_best`` = 2.5). The experiment's range therefore
  defaults to ``1.5 * lambda_best``; ``--lambda-top seed`` gives the seed's.
- Units: T is normalised by the whole network's time, so ``T^T 1`` is the share
  of the forward time in the prunable edges and lambda (and Lambda) is in nats
  per whole-network forward time. Multiply lambda by ``1 / full_ms`` for nats
  per millisecond.

"Explored" gammas: every gamma when ``2^|E| <= max_enumerate``, else all-on,
all-off, each single edge off and on, and seeded random draws.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from dartscc_fast.prune.edges import gamma_key

__all__ = ["label_entropy", "theorem1_lambda", "explore_gammas", "evaluate_gammas", "LambdaEstimate",
           "estimate_lambda"]


def label_entropy(labels: Tensor, num_classes: Optional[int] = None) -> float:
    """``L_inf`` for the cross-entropy: the entropy (nats) of the labels' empirical distribution."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("label_entropy: no labels")
    counts = torch.bincount(labels.to(torch.int64), minlength=num_classes or 0).to(torch.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def theorem1_lambda(l_inf: float, l_sup: float, t: Union[Tensor, Sequence[float]]) -> float:
    """``(l_inf - l_sup) / sum(t)``, the seed's Lambda; needs the hypothesis ``l_inf > l_sup``.

    Raises:
        ValueError: a negative or non-finite T, ``sum(t) == 0``, or ``l_sup >= l_inf``
            (the theorem gives no positive bound then).
    """
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"T must be a non-empty vector of finite times >= 0, got {t.tolist()}")
    total = float(t.sum())
    if total <= 0:
        raise ValueError("T^T 1 is 0: the edges take no time, so no trade-off lambda is defined")
    if not (math.isfinite(l_inf) and math.isfinite(l_sup)):
        raise ValueError(f"L_inf and L_sup must be finite, got {l_inf}, {l_sup}")
    if l_sup >= l_inf:
        raise ValueError(f"Theorem 1 needs L_inf > L_sup (every valid network beats the best constant), got "
                         f"L_inf = {l_inf:.4g}, L_sup = {l_sup:.4g}")
    return (l_inf - l_sup) / total


def explore_gammas(num_edges: int, max_enumerate: int = 128, samples: int = 64, seed: int = 0) -> Tensor:
    """The gammas to evaluate, ``[G, E]`` float 0/1, all-on first (see the module docstring)."""
    E = int(num_edges)
    if E < 1:
        raise ValueError(f"num_edges must be >= 1, got {num_edges}")
    if 2 ** E <= max_enumerate:
        rows = [list(r) for r in itertools.product((1, 0), repeat=E)]  # starts with all-on
        return torch.tensor(rows, dtype=torch.float32)
    eye = torch.eye(E)
    gen = torch.Generator().manual_seed(seed)
    rand = (torch.rand(samples, E, generator=gen) < 0.5).float()
    g = torch.cat([torch.ones(1, E), torch.zeros(1, E), 1 - eye, eye, rand])
    return _dedupe(g)


def _dedupe(g: Tensor) -> Tensor:
    seen, rows = set(), []
    for r in g:
        k = tuple(int(v) for v in r.tolist())
        if k not in seen:
            seen.add(k)
            rows.append(r)
    return torch.stack(rows)


@torch.inference_mode()
def evaluate_gammas(net, loader, gammas: Tensor) -> Dict[str, List[float]]:
    """Mean cross-entropy and accuracy of the pruned ``net`` on ``loader`` for each hard gamma."""
    net.eval()
    losses, accs = [], []
    for g in gammas:
        tot, correct, n = 0.0, 0, 0
        for x, y in loader:
            out = net(x, g)
            tot += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += y.numel()
        losses.append(tot / n)
        accs.append(correct / n)
    return {"loss": losses, "acc": accs}


@dataclass
class LambdaEstimate:
    """Theorem 1's ingredients and results (see the module docstring for the reading)."""
    l_inf: float
    l_sup: float
    l_min: float
    t_sum: float
    lambda_: float
    lambda_best: float
    gamma_sup: str
    gamma_min: str
    explored: List[Dict] = field(default_factory=list)
    excluded: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return {"Lambda": self.lambda_, "Lambda_best": self.lambda_best, "L_inf": self.l_inf, "L_sup": self.l_sup,
                "L_min": self.l_min, "T_sum": self.t_sum, "gamma_sup": self.gamma_sup, "gamma_min": self.gamma_min,
                "explored": self.explored, "excluded_no_better_than_constant": self.excluded,
                "units": "T normalised by the whole network's forward time; lambda in nats per whole-network time"}


def estimate_lambda(losses: Sequence[float], gammas: Tensor, l_inf: float, t: Union[Tensor, Sequence[float]],
                    accs: Optional[Sequence[float]] = None) -> LambdaEstimate:
    """Lambda from the explored gammas' validation losses (valid: loss < ``l_inf``)."""
    keys = [gamma_key(g) for g in gammas]
    explored = [{"gamma": k, "loss": float(l), **({"acc": float(accs[i])} if accs is not None else {}),
                 "valid": bool(l < l_inf)} for i, (k, l) in enumerate(zip(keys, losses))]
    valid = [e for e in explored if e["valid"]]
    if not valid:
        raise ValueError(f"no explored gamma beats the best constant prediction (L_inf = {l_inf:.4g} nats): "
                         f"the pretrained network is no better than chance, so Theorem 1 gives no bound")
    worst = max(valid, key=lambda e: e["loss"])
    best = min(valid, key=lambda e: e["loss"])
    lam = theorem1_lambda(l_inf, worst["loss"], t)
    lam_best = theorem1_lambda(l_inf, best["loss"], t)
    t_sum = float(torch.as_tensor(t, dtype=torch.float64).sum())
    return LambdaEstimate(l_inf, worst["loss"], best["loss"], t_sum, lam, lam_best, worst["gamma"], best["gamma"],
                          explored, [e["gamma"] for e in explored if not e["valid"]])
