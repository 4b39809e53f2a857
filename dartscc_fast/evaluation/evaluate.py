"""Evaluating derived architectures, and the baselines they are compared with.

(a) Inherited weights: the discrete architecture run inside the trained
    supernet (one-hot weights, only its ops run); quick, no training.
(b) Retrained from scratch: the standalone network trained for a configurable
    number of epochs on the train split and tested on the test split (the
    seeds' "test accuracy").

Baselines, searched and evaluated the same way:
- DARTS: the plain search with no latency term (kappa = 0), S-independent logits;
- FBNet-style: one search per fixed kappa (plain latency, every type weighted
  alike): one search per trade-off;
- random architectures whose predicted latency matches a target.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from dartscc_fast.latency.measure import check_memory_format, in_format
from dartscc_fast.nn.optim import adam
from dartscc_fast.progress import Progress
from dartscc_fast.space import DiscreteNetwork, Genotype, SearchSpace, genotype_weights, mixed_random_genotype
from dartscc_fast.validate import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STEPS, check_fields

__all__ = ["genotype_weights", "inherited_accuracy", "inherited_accuracies",
           "train_discrete", "retrain", "baseline_config", "random_matched",
           "difference_se", "within_noise", "dearest_within_noise", "UNIFORM_S"]

UNIFORM_S = "pool=0.3333,identity=0.3333,conv=0.3334"


# ------------------------------------------------------------------ inherited weights
@torch.no_grad()
def inherited_accuracy(supernet: nn.Module, space: SearchSpace, genotype: Genotype, loader,
                       max_batches: Optional[int] = None) -> float:
    """Accuracy of the genotype with the supernet's weights (only its ops run).

    BatchNorm uses the batch's statistics: the supernet's running statistics
    mix every architecture it sampled, not this one's (as in DARTS's and
    SPOS's evaluation of inherited weights). The supernet is not modified.
    """
    return inherited_accuracies(supernet, space, [genotype], loader, max_batches)[0]


def inherited_accuracies(supernet: nn.Module, space: SearchSpace, genotypes: Sequence[Genotype], loader,
                         max_batches: Optional[int] = None, progress: Optional[str] = None) -> List[float]:
    """:func:`inherited_accuracy` of several genotypes, with one copy of the supernet (``progress``: a bar's title)."""
    net = copy.deepcopy(supernet).train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False  # batch statistics, running buffers untouched
    out = []
    for g in Progress(genotypes, desc=progress or "", enabled=None if progress else False):
        wn, wr = genotype_weights(space, g)
        correct = total = 0
        with torch.no_grad():
            for b, (x, y) in enumerate(loader):
                if max_batches is not None and b >= max_batches:
                    break
                logits = net(x, wn, wr, hard=True)
                correct += int((logits.argmax(1) == y).sum())
                total += int(y.numel())
        if total == 0:
            raise _empty(loader, "inherited_accuracy")
        out.append(correct / total)
    return out


# --------------------------------------------------------------------------- retraining
@dataclasses.dataclass
class RetrainConfig:
    epochs: int = 2
    lr: float = 3e-3
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    seed: int = 0
    max_steps_per_epoch: Optional[int] = None
    progress: bool = True
    # the network's and its inputs' layout while it trains; None: the device's default (channels_last on the
    # CPU, where torch's pooling and oneDNN's convolutions are vectorised over channels: the demo's A, B and C
    # profiles train 1.3-1.75x faster per step than in NCHW, 2 threads, batch 64)
    memory_format: Optional[str] = None

    def __post_init__(self):
        # epochs >= 1: to evaluate with the supernet's weights only, retrain nothing (no RetrainConfig)
        check_fields(self, {"epochs": POSITIVE_INT, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
                            "grad_clip": POSITIVE, "seed": NON_NEGATIVE_INT, "max_steps_per_epoch": STEPS})


def _empty(loader, what: str) -> ValueError:
    return ValueError(f"{what}: the split holds no images ({len(loader.dataset)} in its dataset, "
                      f"batch size {loader.batch_size}); give it a share with --split, or raise --limit")


@torch.no_grad()
def accuracy(model: nn.Module, loader, memory_format: str = "contiguous") -> float:
    """Top-1 accuracy over ``loader``; ValueError for an empty one (no accuracy to report)."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(in_format(x, memory_format)).argmax(1) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise _empty(loader, "accuracy")
    return correct / total


def train_discrete(space: SearchSpace, genotype: Genotype, loaders, cfg: RetrainConfig = RetrainConfig(),
                   desc: str = "retrain") -> nn.Module:
    """The discrete network of `genotype` trained from scratch on the train split (Adam, cosine lr).

    Returned in training's layout (``cfg.memory_format``) and in eval mode.
    """
    fmt = check_memory_format(cfg.memory_format, "cpu")
    torch.manual_seed(cfg.seed)
    model = in_format(DiscreteNetwork(space, genotype), fmt)
    opt = adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    from torch.utils.data import DataLoader, RandomSampler
    train = DataLoader(loaders.train.dataset, batch_size=loaders.train.batch_size,
                       sampler=RandomSampler(loaders.train.dataset, generator=gen), drop_last=True)
    steps = len(train) if cfg.max_steps_per_epoch is None else min(len(train), cfg.max_steps_per_epoch)
    if steps == 0:
        raise ValueError(f"{desc}: the train split ({len(loaders.train.dataset)} images) has fewer than one batch "
                         f"of {loaders.train.batch_size}; nothing would be trained")
    total = max(steps * cfg.epochs, 1)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        bar = Progress(total=steps, desc=f"{desc} {epoch + 1}/{cfg.epochs}", enabled=None if cfg.progress else False)
        it = iter(train)
        for _ in range(steps):
            x, y = next(it)
            for g in opt.param_groups:
                g["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            logits = model(in_format(x, fmt))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            bar.set(loss=loss.item(), acc=(logits.argmax(1) == y).float().mean().item())
            bar.update()
        bar.close()
    return model.eval()


def retrain(space: SearchSpace, genotype: Genotype, loaders, cfg: RetrainConfig = RetrainConfig(),
            desc: str = "retrain") -> Dict:
    """Train the discrete network from scratch (:func:`train_discrete`); test accuracy on the test split.

    Returns ``{"test_acc", "val_acc", "epochs", "memory_format", "seconds", "split"}`` (``val_acc`` None
    when the split gives validation no images); the split text belongs next to the accuracy.
    """
    t0 = time.perf_counter()
    fmt = check_memory_format(cfg.memory_format, "cpu")
    model = train_discrete(space, genotype, loaders, cfg, desc)
    val_acc = accuracy(model, loaders.val, fmt) if len(loaders.val.dataset) else None  # a split may give val none
    return {"test_acc": accuracy(model, loaders.test, fmt), "val_acc": val_acc,
            "epochs": cfg.epochs, "memory_format": fmt, "seconds": time.perf_counter() - t0,
            "split": str(loaders.split)}


# ------------------------------------------------------------------ picking among retrained candidates
def difference_se(p: float, q: float, n: int) -> float:
    """Standard error of the difference of two accuracies ``p`` and ``q``, each measured on ``n`` images."""
    return math.sqrt((p * (1 - p) + q * (1 - q)) / n)


def within_noise(best: float, other: float, n: int) -> bool:
    """Whether accuracy ``other`` is no more than two standard errors of the difference below ``best``."""
    return best - other <= 2 * difference_se(best, other, n)


def dearest_within_noise(candidates: Sequence, val_acc, latency, n_val: int):
    """Of retrained candidates for one latency budget, the dearest one the validation split cannot rule out.

    A candidate is level with the best when its validation accuracy is within two standard errors of the
    difference (:func:`difference_se` on ``n_val`` images); of those, the one with the highest predicted
    latency is taken (ties: the better validation accuracy). Under a budget, latency left unspent buys
    nothing, and a few hundred validation images cannot separate architectures a point or two apart
    (docs/design.md, "The front's picks"). ``val_acc`` and ``latency`` map a candidate to its figure.
    """
    if not candidates:
        raise ValueError("no candidates to pick from")
    if n_val <= 0:
        raise ValueError(f"picking by validation accuracy needs validation images, got n_val={n_val}")
    best = max(val_acc(c) for c in candidates)
    level = [c for c in candidates if within_noise(best, val_acc(c), n_val)]
    return max(level, key=lambda c: (latency(c), val_acc(c)))


# --------------------------------------------------------------------------- baselines
def baseline_config(base, kind: str, kappa: float = 0.0, out_dir: Optional[str] = None):
    """The SearchConfig of a baseline search, otherwise identical to `base`.

    kind 'darts': S-independent logits, no latency term; 'fbnet': S-independent
    logits, the plain latency (every type weighted alike, and normalised by the
    uniform architecture when `base` prices types by 'type' or 'type-stride') with this fixed kappa.
    Both draw their Gumbel noise once per batch, as DARTS and FBNet do (one fixed
    S leaves nothing to draw per sample), and run without the hypernetwork search's
    guards (the sandwich rule, the dropout of parameter-free candidates): they are the
    searches as their authors run them.
    """
    if kind == "darts":
        return dataclasses.replace(base, hypernet="constant", strength=False, sandwich=False, fixed_S=UNIFORM_S,
                                   free_op_dropout=0.0, kappa=0.0, per_sample=False,
                                   out_dir=out_dir or str(Path(base.out_dir).parent / "darts"))
    if kind == "fbnet":
        return dataclasses.replace(base, hypernet="constant", strength=False, sandwich=False, fixed_S=UNIFORM_S,
                                   free_op_dropout=0.0, kappa=float(kappa), per_sample=False,
                                   normalise="uniform" if base.normalise.startswith("type") else base.normalise,
                                   out_dir=out_dir or str(Path(base.out_dir).parent / f"fbnet-kappa{kappa:g}"))
    raise ValueError(f"baseline kind must be 'darts' or 'fbnet', got {kind!r}")


def random_matched(space: SearchSpace, table, targets_ms: Sequence[float], candidates: int = 300,
                   seed: int = 0, top2: bool = False, exclude: Sequence[str] = ()) -> List[Tuple[Genotype, float]]:
    """For each target latency, the random architecture (of `candidates` drawn) predicted closest to it,
    a different one per target and none of ``exclude`` (genotype JSONs: the architectures compared with).

    The candidates are :func:`~dartscc_fast.space.mixed_random_genotype`: each draws its own mix of
    primitives, so that they span the latencies a search's picks lie at. With Dirichlet(1) mixes the
    cheapest profile (B, pooling on the stride-2 edges, identity on the others) was still missed by
    14 %; with these, the profiles of three tables were matched within 2.6 %.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(candidates):
        g = mixed_random_genotype(space, gen, top2=top2)
        pool.append((g, float(table.predict(space, g))))
    out, used = [], set(exclude)
    for t in targets_ms:
        best = min((p for p in pool if p[0].to_json() not in used), key=lambda p: abs(p[1] - t))
        used.add(best[0].to_json())
        out.append(best)
    return out
