"""The pruning experiment of seed 000: pretrain, measure T, estimate Lambda, part 1 and part 2.

1. Pretrain the ResNet (cached on disk, keyed by everything that changes it;
   written atomically).
2. Gate its prunable edges and measure T(e) (see :mod:`.edges`).
3. Evaluate the explored gammas on the validation split: Lambda (see
   :mod:`.lambda_bound`). When every gamma was enumerated this also gives the
   exact minimiser of the deterministic objective ``L_val(gamma) + lambda T^T gamma``
   at each lambda, reported as a reference curve.
4. Part 1: for each fixed lambda, optimise the edge logits alone (network
   frozen, eval mode) on the validation split, gamma drawn with the compiled
   binary Gumbel-Softmax (``stack([l, 0])``, column 0), hard with
   straight-through or soft.
5. Part 2, Algorithm 1: warm up the hypernetwork towards the all-on bias until
   hypernet(0) is well above chance, then train it with lambda ~ U[0, top] per
   sample.

Every pruned network is then the deterministic ``gamma_e = [logit_e > 0]``,
scored on the test split and timed with its skipped branches not run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from dartscc_fast.data.datasets import make_loaders
from dartscc_fast.evaluation.evaluate import accuracy
from dartscc_fast.latency.measure import num_threads
from dartscc_fast.ops import gumbel_softmax
from dartscc_fast.progress import Progress
from dartscc_fast.prune.edges import PrunableNet, gamma_key, measure_edge_times, time_module
from dartscc_fast.prune.hypernet import LambdaHypernet, check_lambda
from dartscc_fast.prune.lambda_bound import estimate_lambda, evaluate_gammas, explore_gammas, label_entropy
from dartscc_fast.prune.resnet import MODELS, ResNet, build_resnet, resnet18_cifar, small_resnet
from dartscc_fast.validate import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Float, Int, check_fields

__all__ = ["PruneConfig", "default_cache_dir", "pretrain", "sample_gamma", "optimise_gamma", "train_hypernet",
           "run_prune"]


@dataclass
class PruneConfig:
    """Everything a run depends on; the defaults are the ``--demo`` run (about 5 minutes here)."""
    dataset: str = "fmnist"
    root: Optional[str] = None
    model: str = "small"                  # "small" or "resnet18"
    widths: Tuple[int, ...] = (8, 16, 32)  # small ResNet only
    blocks: int = 3                       # per stage, small ResNet only
    limit: Optional[int] = None
    seed: int = 0
    batch_size: int = 64
    # pretraining
    pretrain_epochs: int = 10
    pretrain_lr: float = 0.05
    weight_decay: float = 5e-4
    cache_dir: Optional[str] = None
    use_cache: bool = True
    # timing
    timing_batch: int = 64
    threads: int = 1
    timing_seconds: float = 0.5
    # Lambda
    max_enumerate: int = 128
    explore_samples: int = 64
    # part 1
    n_lambdas: int = 10
    lambdas: Optional[Tuple[float, ...]] = None  # explicit grid, overrides n_lambdas / lambda_top
    # "best" (Lambda_best), "seed" (Lambda) or a number. Not the seed's form by default: its L_sup is the valid
    # gamma nearest to L_inf, which made Lambda 0.003 here, 1000x below where accuracy falls (see lambda_bound)
    lambda_top: Union[str, float] = "best"
    top_factor: float = 1.5
    steps: int = 60
    gamma_lr: float = 0.2
    tau: float = 1.0
    hard: bool = True
    per_sample: bool = True
    init_logit: float = 2.0
    # part 2
    hyper_steps: int = 400
    hyper_lr: float = 0.1
    knots: int = 5
    hyper_range: float = 1.5     # train on lambda ~ U[0, hyper_range * Lambda]; the seed's Algorithm 1 is 1.0
    warmup_std: float = 0.5
    warmup_max_steps: int = 200
    eval_points: int = 15
    out: str = "prune-out"

    def __post_init__(self):
        check_fields(self, {"blocks": POSITIVE_INT, "limit": Int(1, optional=True, none="every image"),
                            "seed": NON_NEGATIVE_INT, "batch_size": POSITIVE_INT, "pretrain_epochs": NON_NEGATIVE_INT,
                            "pretrain_lr": POSITIVE, "weight_decay": NON_NEGATIVE, "timing_seconds": POSITIVE,
                            "max_enumerate": POSITIVE_INT, "explore_samples": POSITIVE_INT, "top_factor": POSITIVE,
                            "gamma_lr": POSITIVE, "tau": POSITIVE, "init_logit": Float(), "hyper_steps": POSITIVE_INT,
                            "hyper_lr": POSITIVE, "hyper_range": POSITIVE, "warmup_std": NON_NEGATIVE,
                            "warmup_max_steps": NON_NEGATIVE_INT})
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.lambdas is not None:
            check_lambda(torch.tensor(self.lambdas, dtype=torch.float64), "every lambda")
            self.lambdas = tuple(float(v) for v in self.lambdas)
        if isinstance(self.lambda_top, str) and self.lambda_top not in ("seed", "best"):
            try:
                self.lambda_top = float(self.lambda_top)
            except ValueError:
                raise ValueError(f"lambda_top must be 'seed', 'best' or a number, got {self.lambda_top!r}") from None
        if not isinstance(self.lambda_top, str):
            check_lambda(self.lambda_top, "lambda_top")
        for name in ("n_lambdas", "steps", "eval_points", "knots", "threads", "timing_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.top_factor <= 0 or self.hyper_range <= 0 or self.tau <= 0:
            raise ValueError("top_factor, hyper_range and tau must be > 0")

    def to_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d


def default_cache_dir() -> Path:
    """``$DARTSCC_CACHE/prune``, else ``$XDG_CACHE_HOME/dartscc_fast/prune``, else ``~/.cache/dartscc_fast/prune``."""
    if os.getenv("DARTSCC_CACHE"):
        return Path(os.environ["DARTSCC_CACHE"]) / "prune"
    base = Path(os.getenv("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dartscc_fast" / "prune"


def _build_model(cfg: PruneConfig, in_channels: int) -> ResNet:
    if cfg.model == "resnet18":
        return resnet18_cifar(10, in_channels)
    return small_resnet(10, in_channels, cfg.widths, cfg.blocks)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrain(cfg: PruneConfig, loaders, log: Callable = print) -> Tuple[ResNet, Dict]:
    """The pretrained ResNet, from the cache when a run with the same settings saved one."""
    x0 = loaders.train.dataset.tensors[0]
    model = _build_model(cfg, int(x0.shape[1]))
    key_src = {"dataset": cfg.dataset, "split": loaders.split.fingerprint, "model": model.config,
               "epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "wd": cfg.weight_decay,
               "batch": cfg.batch_size, "seed": cfg.seed, "version": 1}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cfg.cache_dir or default_cache_dir()) / f"{cfg.model}-{cfg.dataset}-{key}.pt"
    if cfg.use_cache and path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = build_resnet(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        log(f"pretrained {cfg.model} loaded from cache {path}")
        return model, {**ckpt["meta"], "cache": str(path), "cached": True}
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, int(x0.shape[1]))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain_lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    total = max(cfg.pretrain_epochs * len(loaders.train), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    bar = Progress(total=total, desc=f"pretrain {cfg.model}")
    for _ in range(cfg.pretrain_epochs):
        model.train()
        for x, y in loaders.train:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5  # horizontal flips: the one cheap augmentation
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set(loss=float(loss.detach()))
            bar.update()
    bar.close()
    meta = {"epochs": cfg.pretrain_epochs, "seconds": time.perf_counter() - t0,
            "val_acc": accuracy(model, loaders.val), "test_acc": accuracy(model, loaders.test),
            "split": str(loaders.split)}
    if cfg.use_cache:
        _atomic_save({"config": model.config, "state_dict": model.state_dict(), "meta": meta}, path)
        log(f"pretrained {cfg.model} in {meta['seconds']:.0f}s, cached at {path}")
    return model, {**meta, "cache": str(path) if cfg.use_cache else None, "cached": False}


def sample_gamma(logits: Tensor, tau: float, hard: bool, generator: torch.Generator) -> Tensor:
    """Binary Gumbel-Softmax of edge logits (any shape): the compiled op over ``stack([l, 0])``, column 0."""
    pair = torch.stack([logits, torch.zeros_like(logits)], -1)
    return gumbel_softmax(pair, tau, hard, generator=generator)[..., 0]


def _cycle(loader):
    while True:
        for batch in loader:
            yield batch


def optimise_gamma(net: PrunableNet, loader, t: Tensor, lam: float, cfg: PruneConfig,
                   generator: torch.Generator) -> Tensor:
    """Part 1 for one lambda: the edge logits minimising ``E[L(gamma) + lam T^T gamma]``, network frozen."""
    check_lambda(lam)
    theta = torch.full((net.num_edges,), float(cfg.init_logit), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=cfg.gamma_lr)
    batches = _cycle(loader)
    net.eval()
    for _ in range(cfg.steps):
        x, y = next(batches)
        logits = theta.expand(x.shape[0], -1) if cfg.per_sample else theta
        g = sample_gamma(logits, cfg.tau, cfg.hard, generator)
        loss = F.cross_entropy(net(x, g), y) + lam * (g @ t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return theta.detach()


def train_hypernet(net: PrunableNet, loader, t: Tensor, top: float, cfg: PruneConfig, generator: torch.Generator,
                   score: Callable[[Tensor], float], target_acc: float,
                   log: Callable = print) -> Tuple[LambdaHypernet, Dict]:
    """Algorithm 1: warm-up towards the all-on bias until ``score(hypernet(0))`` reaches ``target_acc``, then
    lambda ~ U[0, top] per sample with loss ``L(gamma) + lambda T^T gamma``."""
    hyper = LambdaHypernet(net.num_edges, top, cfg.knots)
    opt = torch.optim.Adam(hyper.parameters(), lr=cfg.hyper_lr)
    N, E = cfg.batch_size, net.num_edges
    bias = torch.full((E,), float(cfg.init_logit))
    warm, acc0 = 0, score((hyper(0.0) > 0).float())
    while acc0 < target_acc and warm < cfg.warmup_max_steps:
        for _ in range(10):  # Algorithm 1, lines 4-6: regress the logits onto samples around the bias
            lam = torch.rand(N, generator=generator) * top
            target = bias + cfg.warmup_std * torch.randn(N, E, generator=generator)
            loss = F.mse_loss(hyper(lam), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            warm += 1
        acc0 = score((hyper(0.0).detach() > 0).float())
    log(f"hypernet warm-up: {warm} steps, hypernet(0) val accuracy {acc0:.3f} (target {target_acc:.3f})")
    batches = _cycle(loader)
    net.eval()
    opt = torch.optim.Adam(hyper.parameters(), lr=cfg.hyper_lr)
    bar = Progress(total=cfg.hyper_steps, desc="part 2 hypernet")
    for _ in range(cfg.hyper_steps):
        x, y = next(batches)
        lam = torch.rand(x.shape[0], generator=generator) * top
        g = sample_gamma(hyper(lam), cfg.tau, cfg.hard, generator)
        loss = F.cross_entropy(net(x, g), y) + (lam * (g @ t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set(loss=float(loss.detach()))
        bar.update()
    bar.close()
    return hyper, {"warmup_steps": warm, "warmup_acc0": acc0, "warmup_target": target_acc,
                   "steps": cfg.hyper_steps, "train_range": [0.0, top]}


class _Scorer:
    """Validation loss / accuracy, test accuracy and measured latency of hard gammas, each computed once."""

    def __init__(self, net: PrunableNet, loaders, timing_batch: int, threads: int, timing_seconds: float):
        self.net, self.loaders = net, loaders
        self.threads, self.seconds = threads, timing_seconds
        x0 = loaders.train.dataset.tensors[0]
        self.x_time = torch.randn((timing_batch,) + tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(1))
        self.val: Dict[str, Tuple[float, float]] = {}
        self.test: Dict[str, float] = {}
        self.ms: Dict[str, float] = {}

    def add_val(self, gammas: Tensor, losses: Sequence[float], accs: Sequence[float]) -> None:
        for g, l, a in zip(gammas, losses, accs):
            self.val[gamma_key(g)] = (float(l), float(a))

    def row(self, g: Tensor) -> Dict:
        k = gamma_key(g)
        if k not in self.val:
            r = evaluate_gammas(self.net, self.loaders.val, g[None])
            self.val[k] = (r["loss"][0], r["acc"][0])
        if k not in self.test:
            self.test[k] = evaluate_gammas(self.net, self.loaders.test, g[None])["acc"][0]
        if k not in self.ms:
            with torch.inference_mode():
                self.ms[k] = time_module(lambda: self.net(self.x_time, g), self.threads, self.seconds).median
        return {"gamma": k, "val_loss": self.val[k][0], "val_acc": self.val[k][1], "test_acc": self.test[k],
                "measured_ms": self.ms[k]}


def run_prune(cfg: PruneConfig, log: Callable = print) -> Dict:
    """The whole experiment on ``cfg.threads`` torch threads; returns the report dictionary (see :mod:`.report`).

    One thread is the default: on a small machine shared with other processes,
    two OpenMP threads on two busy cores wait on each other (a 40x slowdown
    measured here), and the timed latencies use the same count anyway.
    """
    with num_threads(cfg.threads):
        return _run_prune(cfg, log)


def _run_prune(cfg: PruneConfig, log: Callable) -> Dict:
    run = _PruneRun(cfg, log)
    run.prepare()
    run.estimate_lambda()
    part1 = run.part1()
    part2, hyper, hinfo = run.part2()
    run.timings["total_s"] = time.perf_counter() - run.t_start
    return run.result(part1, part2, hyper, hinfo)


class _PruneRun:
    """One pruning experiment: the pretrained network and its edge times, Lambda, then the two parts."""

    def __init__(self, cfg: PruneConfig, log: Callable):
        self.cfg, self.log = cfg, log
        self.t_start = time.perf_counter()
        self.timings: Dict[str, float] = {}

    def prepare(self) -> None:
        """Data, the pretrained model (frozen) and its prunable edges' times."""
        cfg, log = self.cfg, self.log
        torch.manual_seed(cfg.seed)
        self.loaders = make_loaders(cfg.dataset, cfg.root, cfg.batch_size, cfg.seed, cfg.limit)
        log(f"data: {self.loaders.split}")
        t0 = time.perf_counter()
        self.model, self.pre = pretrain(cfg, self.loaders, log)
        self.timings["pretrain_s"] = time.perf_counter() - t0
        for p in self.model.parameters():
            p.requires_grad_(False)
        x0 = self.loaders.train.dataset.tensors[0]
        self.net = net = PrunableNet(self.model, (2,) + tuple(x0.shape[1:]))
        t0 = time.perf_counter()
        self.timing = measure_edge_times(net, (cfg.timing_batch,) + tuple(x0.shape[1:]), cfg.threads,
                                         cfg.timing_seconds)
        self.timings["edge_times_s"] = time.perf_counter() - t0
        self.t = net.t_norm()
        log(f"{net.num_edges} prunable edges, T^T 1 = {float(self.t.sum()):.3f} of the whole network's "
            f"{self.timing['full_ms']:.2f} ms")

    def estimate_lambda(self) -> None:
        """Theorem 1's Lambda from explored gammas, and the lambdas of both parts."""
        cfg, net = self.cfg, self.net
        t0 = time.perf_counter()
        self.val_labels = self.loaders.val.dataset.tensors[1]
        l_inf = label_entropy(self.val_labels, 10)
        self.gammas = explore_gammas(net.num_edges, cfg.max_enumerate, cfg.explore_samples, cfg.seed)
        self.ev = evaluate_gammas(net, self.loaders.val, self.gammas)
        self.est = est = estimate_lambda(self.ev["loss"], self.gammas, l_inf, self.t, self.ev["acc"])
        self.timings["lambda_s"] = time.perf_counter() - t0
        self.log(f"Lambda = {est.lambda_:.4g} (L_inf {est.l_inf:.4f}, L_sup {est.l_sup:.4f} at gamma "
                 f"{est.gamma_sup}, T^T 1 {est.t_sum:.3f}); Lambda_best = {est.lambda_best:.4g}")
        self.scorer = _Scorer(net, self.loaders, cfg.timing_batch, cfg.threads, cfg.timing_seconds)
        self.scorer.add_val(self.gammas, self.ev["loss"], self.ev["acc"])
        self.enumerated = 2 ** net.num_edges <= cfg.max_enumerate
        if cfg.lambdas is not None:
            self.lambdas = list(cfg.lambdas)
            self.top = base = max(self.lambdas) if max(self.lambdas) > 0 else est.lambda_
        else:
            base = est.lambda_ if cfg.lambda_top == "seed" else est.lambda_best if cfg.lambda_top == "best" \
                else float(cfg.lambda_top)
            self.top = cfg.top_factor * base
            self.lambdas = torch.linspace(0, self.top, cfg.n_lambdas).tolist()
        self.hyper_top = cfg.hyper_range * base if cfg.lambdas is None else self.top

    def objective(self, row: Dict, lam: float) -> float:
        bits = torch.tensor([float(c) for c in row["gamma"]])
        return row["val_loss"] + lam * float(bits @ self.t)

    def exact(self, lam: float) -> Optional[str]:
        """The enumerated gamma of least objective at ``lam`` (None when the edges are too many to enumerate)."""
        if not self.enumerated:
            return None
        obj = torch.tensor(self.ev["loss"]) + lam * (self.gammas @ self.t)
        return gamma_key(self.gammas[int(obj.argmin())])

    def scored(self, gamma: Tensor, lam: float, **extra) -> Dict:
        row = {"lambda": lam, **self.scorer.row(gamma), **extra}
        row["objective"] = self.objective(row, lam)
        return row

    def part1(self) -> List[Dict]:
        """Part 1: gamma optimised for each lambda on its own."""
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        rows = []
        for lam in Progress(self.lambdas, desc="part 1 per-lambda"):
            theta = optimise_gamma(self.net, self.loaders.val, self.t, lam, self.cfg, gen)
            rows.append({**self.scored((theta > 0).float(), lam, logits=theta.tolist()),
                         "exact_gamma": self.exact(lam)})
        self.timings["part1_s"] = time.perf_counter() - t0
        return rows

    def part2(self):
        """Part 2: one hypernetwork for every lambda, evaluated on a grid."""
        cfg, t0 = self.cfg, time.perf_counter()
        counts = torch.bincount(self.val_labels, minlength=10).float()
        self.chance = float(counts.max() / counts.sum())
        acc_on = self.scorer.row(torch.ones(self.net.num_edges))["val_acc"]
        target = self.chance + 0.5 * (acc_on - self.chance)
        val_score = lambda g: self.scorer.row(g)["val_acc"]  # noqa: E731
        hyper, hinfo = train_hypernet(self.net, self.loaders.val, self.t, self.hyper_top, cfg,
                                      torch.Generator().manual_seed(cfg.seed + 2), val_score, target, self.log)
        self.grid = sorted(set(torch.linspace(0, self.top, cfg.eval_points).tolist()) | set(self.lambdas))
        rows = []
        with torch.no_grad():
            for lam in self.grid:
                logits = hyper(lam)
                rows.append({**self.scored((logits > 0).float(), lam, logits=logits.tolist()),
                             "exact_gamma": self.exact(lam)})
        self.timings["part2_s"] = time.perf_counter() - t0
        return rows, hyper, hinfo

    def result(self, part1: List[Dict], part2: List[Dict], hyper, hinfo: Dict) -> Dict:
        cfg, net = self.cfg, self.net
        exact_rows = [self.scored(torch.tensor([float(c) for c in self.exact(lam)]), lam)
                      for lam in self.grid] if self.enumerated else []
        return {
            "config": cfg.to_dict(), "split": self.loaders.split.as_dict(), "pretrain": self.pre,
            "model": self.model.config, "edges": [e.to_dict() for e in net.edges], "rejected": net.rejected,
            "timing": {**self.timing, "method": "latency.measure.time_callable: warm-up, median until stable, "
                       "torch.inference_mode"},
            "lambda": self.est.to_dict(), "lambda_range": [0.0, self.top], "lambda_top": cfg.lambda_top,
            "full": self.scorer.row(torch.ones(net.num_edges)), "chance_acc": self.chance,
            "part1": part1, "part2": {"rows": part2, **hinfo, "hypernet": hyper.config(),
                                      "state_dict": {k: v.tolist() for k, v in hyper.state_dict().items()}},
            "exact": exact_rows, "compute": {"part1_gamma_steps": cfg.steps * len(self.lambdas),
                                             "part2_steps": hinfo["steps"] + hinfo["warmup_steps"]},
            "timings": self.timings,
        }
