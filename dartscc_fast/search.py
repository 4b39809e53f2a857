"""The search: one supernet and one hypernetwork trained for every S at once.

Per mini-batch: S ~ Dirichlet(1) (once per batch, or per sample), alpha = H_a(S),
gamma ~ GumbelSoftmax(alpha, tau) (soft, or hard: only the drawn ops run), and

    loss = CE(supernet(x, gamma), y) + kappa * Lat_S(gamma)

with Lat_S from the latency table (normalised so that the uniform architecture
costs 1 on any device). Single-level Adam (the seeds) or DARTS's first-order
bilevel scheme (w on the train split, a on the validation split). Cosine
learning rate for w, gradient clipping, deterministic seeds, a checkpoint every
epoch and every ``checkpoint_every`` steps, written atomically with a hash of its
contents (:mod:`dartscc_fast.checkpoint`; ``--resume`` continues and gives the same
result as an uninterrupted run), DistributedDataParallel under ``torchrun``. The
output directory is locked while a search writes it, and a new search refuses one
that holds a search unless resumed or forced (:mod:`dartscc_fast.rundir`).

Randomness is re-derived from (seed, epoch, rank) at the start of every epoch
rather than carried in the checkpoint: resuming at an epoch boundary then
replays exactly what an uninterrupted run would have done. A mid-epoch checkpoint
also holds the RNG states and the position in the epoch, whose batch order is a
function of (seed, epoch): the resume skips the batches used and goes on exactly.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dartscc_fast import ops
from dartscc_fast.checkpoint import CheckpointError, checkpoint_part, load_checkpoint, save_checkpoint, \
    table_digest
from dartscc_fast.datasets import check_fractions, make_loaders
from dartscc_fast.optim import adam
from dartscc_fast.latency import NORMALISATIONS, STRIDE_BALANCE, LatencyTable, latency_reg, normalise, \
    simulate_table
from dartscc_fast.hypernet import DEFAULT_HYPERNET, STRENGTH_CURVE, Hypernet, StrengthHypernet, build_hypernet, \
    hypernet_from_config, kappa_of_t, parse_S, sample_S, t_of_kappa
from dartscc_fast.primitives import OP_TYPES
from dartscc_fast.progress import Progress
from dartscc_fast.rundir import claim_run_dir
from dartscc_fast.space import SearchSpace, get_space
from dartscc_fast.validate import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STEPS, Float, \
    Int, arg, check_fields, first_nonfinite

__all__ = ["SearchConfig", "SearchModel", "SearchResult", "NonFiniteError", "latency_term", "run_search",
           "load_search", "spawn_ddp", "temperature", "draw_strength", "default_warmup"]

CHECKPOINT = "checkpoint.pt"
#: What every search checkpoint holds, those of older versions included.
CHECKPOINT_KEYS = ("config", "space", "hypernet_config", "model", "epoch", "step", "history", "L_ms", "L", "split")
#: Batch size of the latency tables a search makes for itself (the seeds' training batch).
TABLE_BATCH = 64


# ------------------------------------------------------------------------ configuration
#: The numeric fields' ranges, checked first when a SearchConfig is made (the CLI's types use the same).
_SEARCH_CHECKS = {
    "limit": Int(1, optional=True, none="every image"), "epochs": POSITIVE_INT, "warmup_epochs": Int(0, optional=True, none="half the epochs"),
    "batch_size": POSITIVE_INT, "max_steps_per_epoch": STEPS, "hidden": POSITIVE_INT, "knots": Int(2),
    "prior_scale": NON_NEGATIVE, "kappa": NON_NEGATIVE, "stride_balance": FRACTION, "tau_start": POSITIVE,
    "tau_end": POSITIVE, "lr_w": POSITIVE, "lr_w_min": NON_NEGATIVE, "wd_w": NON_NEGATIVE,
    "momentum": Float(0, 1, hi_open=True), "lr_a": POSITIVE, "wd_a": NON_NEGATIVE, "grad_clip": POSITIVE,
    "seed": NON_NEGATIVE_INT, "checkpoint_every": Int(1, optional=True, none="at the ends of epochs only"),
    "kappa_max": POSITIVE, "strength_curve": POSITIVE, "strength_knots": Int(2), "strength_zero_share": FRACTION,
}


@dataclass
class SearchConfig:
    """Everything a search depends on; saved with its checkpoint."""
    space: str = "fmnist-paper"
    space_overrides: Dict = field(default_factory=dict)   # e.g. {"C": 8} for a smaller supernet
    data: str = "fmnist"
    data_root: Optional[str] = None
    limit: Optional[int] = None        # use only the first `limit` images (tiny runs, CI)
    split: Tuple[float, float, float] = (0.7, 0.15, 0.15)   # train / validation / test fractions (seeded)
    epochs: int = 4                    # in all, warm-up included
    # first train w alone on uniformly drawn architectures (FBNet, ProxylessNAS); None: epochs // 2
    warmup_epochs: Optional[int] = None
    batch_size: int = 64               # per process
    max_steps_per_epoch: Optional[int] = None

    hypernet: str = DEFAULT_HYPERNET   # 'linear' | 'pwl' | 'mlp' | 'constant' (plain DARTS / FBNet logits)
    hidden: int = 16                   # MLP hypernet width
    knots: int = 4                     # piecewise-linear hypernet knots
    per_sample: bool = False           # S (and Gumbel noise) per sample (DARTS-CC) instead of per batch
    fixed_S: Optional[str] = None      # a fixed S instead of Dirichlet draws (the baselines)
    prior_scale: float = 1.0           # start alpha(S) at -prior_scale * kappa / tau_end * S_type L (0: at 0)

    # The strength axis: the hypernetwork is also fed t in [0, 1], drawn uniformly like S, and the latency
    # term is weighted kappa_of_t(t) in [0, kappa_max]; one search then spans DARTS (t = 0) to the cheapest
    # architectures (docs/design.md). Without it (strength=False), one fixed kappa, as the seeds.
    strength: bool = True
    kappa_max: float = 20.0
    strength_curve: float = STRENGTH_CURVE
    strength_knots: int = 5
    # the share of draws at t = 0 exactly (the cross-entropy alone), the rest uniform on [0, 1]: the accurate
    # end's knot and the convolutions' weights then train as often as a DARTS search's would (docs/design.md)
    strength_zero_share: float = 0.25
    # with the strength axis: the default trade-off that derive, report and the profiles A, B, C take
    # (any kappa in [0, kappa_max] can be asked for afterwards); without it: the one weight searched with
    kappa: float = 2.0
    latency_table: Optional[str] = None  # JSON table; None: simulate (see latency_table_for)
    latency_device: Optional[str] = None  # simulated target when no table is given ('sim:<preset>')
    # 'type': per operation type; 'type-stride': and pool and conv drawn towards one price on each stride's
    # edges (stride_balance); 'uniform' | 'cheapest': the plain latency
    normalise: str = "type-stride"
    stride_balance: float = STRIDE_BALANCE

    tau_start: float = 1.0
    tau_end: float = 0.2
    tau_schedule: str = "linear"       # 'linear' | 'exp'
    hard: bool = True                  # hard Gumbel: only the drawn op of each edge runs

    protocol: str = "single"           # 'single' (one batch updates w and a) | 'bilevel' (first-order DARTS)
    optimizer: str = "adam"            # for w: 'adam' (the seeds) | 'sgd' (DARTS)
    lr_w: float = 3e-3
    lr_w_min: float = 1e-4
    wd_w: float = 3e-4
    momentum: float = 0.9
    lr_a: float = 2e-2
    wd_a: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    # also write the checkpoint every N steps within an epoch (None: at the ends of epochs only), so that a
    # kill on big data loses minutes rather than an epoch; a resume from it is bitwise the uninterrupted run
    checkpoint_every: Optional[int] = 200

    out_dir: str = "runs/search"
    log: str = "csv"                   # 'csv' | 'tensorboard' | 'none'
    progress: bool = True

    def __post_init__(self):
        check_fields(self, _SEARCH_CHECKS)
        if self.lr_w_min > self.lr_w:
            raise ValueError(f"SearchConfig.lr_w_min ({self.lr_w_min:g}) must not exceed lr_w ({self.lr_w:g}): "
                             "the cosine schedule falls from lr_w to lr_w_min")
        try:  # the overrides (e.g. C >= 1) checked now rather than when the search starts
            self.get_space()
        except TypeError as e:
            raise ValueError(f"SearchConfig.space_overrides {self.space_overrides!r}: {e}") from None
        for name, allowed in (("tau_schedule", ("linear", "exp")), ("protocol", ("single", "bilevel")),
                              ("optimizer", ("adam", "sgd")), ("log", ("csv", "tensorboard", "none")),
                              ("normalise", NORMALISATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SearchConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.warmup_epochs is None:
            self.warmup_epochs = default_warmup(self.epochs)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        check_fractions(self.split, "split")
        if self.strength:
            if self.kappa > self.kappa_max:
                raise ValueError(f"kappa ({self.kappa:g}) is the profiles' trade-off on the strength axis and must "
                                 f"not exceed kappa_max ({self.kappa_max:g})")
            if self.hypernet == "constant":
                raise ValueError("the strength axis needs an S-dependent hypernetwork; hypernet='constant' "
                                 "(the DARTS / FBNet baselines) needs strength=False")
        if self.fixed_S is not None:
            parse_S(self.fixed_S)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        # a search saved before the strength axis existed searched one fixed kappa
        d.setdefault("strength", False)
        d.setdefault("strength_zero_share", 0.0)  # before it existed, t was uniform
        if d.get("max_steps_per_epoch") == 0:  # before the options were checked, 0 meant no cap
            d["max_steps_per_epoch"] = None
        if "split" in d:
            d["split"] = tuple(d["split"])
        return cls(**d)

    def loaders(self):
        """The train / validation / test loaders of this search's data and seeded split."""
        return make_loaders(self.data, self.data_root, batch_size=self.batch_size, seed=self.seed,
                            limit=self.limit, fractions=self.split)

    def get_space(self) -> SearchSpace:
        return get_space(self.space, **self.space_overrides)

    def kappa_at(self, t):
        """The latency weight at strength t (a float or a tensor)."""
        return kappa_of_t(t, self.kappa_max, self.strength_curve)

    def t_at(self, kappa: float) -> float:
        """The strength t whose latency weight is kappa."""
        return t_of_kappa(kappa, self.kappa_max, self.strength_curve)


def default_warmup(epochs: int) -> int:
    """The weight warm-up a search of ``epochs`` gets by default: half of them, at least one left to search
    (docs/design.md: the screen behind it)."""
    return max(0, min(epochs // 2, epochs - 1))


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


# ------------------------------------------------------------------------------ latency
def latency_term(w: Tensor, L: Tensor, S: Tensor, type_index: Sequence[int]) -> Tensor:
    """Lat_S(w) = sum_e sum_m S_type(m) L[e, m] w[e, m]: the one place the regulariser is computed.

    ``w [E, k]`` or ``[N, E, k]``, ``S [T]`` or ``[N, T]``; a scalar or ``[N]``.
    """
    return latency_reg(w, L, S, type_index)


def latency_table_for(cfg: SearchConfig, space: SearchSpace) -> LatencyTable:
    """The latency table of a search: the file given, else a simulated device's (``latency_device``,
    default ``sim:mobile-cpu``), built from the roofline model in no time."""
    if cfg.latency_table:
        return LatencyTable.load(cfg.latency_table)
    return simulate_table(space, cfg.latency_device or "sim:mobile-cpu", batch=TABLE_BATCH)


def supernet_L(table, space: SearchSpace, cfg: SearchConfig) -> Tuple[Tensor, Tensor]:
    """``(L_ms, L_norm)``: ``[2E, k]`` per cell type (normal rows, then reduction rows)."""
    L = table.supernet_latency(space, per="cell_type")
    return L.float(), normalise(L, cfg.normalise, space.type_index().tolist(), space.row_strides(),
                                cfg.stride_balance).float()


# -------------------------------------------------------------------------------- model
class SearchModel(nn.Module):
    """Supernet + hypernetwork; ``forward`` draws gamma and runs the supernet (one DDP unit)."""

    def __init__(self, supernet: nn.Module, hypernet: Hypernet):
        super().__init__()
        self.supernet = supernet
        self.hypernet = hypernet

    def forward(self, x: Tensor, S: Tensor, tau: float, hard: bool, seeds: Tensor,
                uniform: bool = False, t: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns ``(logits, gamma [.., 2E, k], alpha [.., 2E, k])``; S ``[T]`` or ``[N, T]``.

        ``uniform``: draw gamma from uniform logits instead of H(S) (the weight warm-up).
        ``t``: the strength (``[]`` or ``[N]``), for a hypernetwork with a strength axis.
        """
        an, ar = self.hypernet(S) if t is None else self.hypernet(S, t)
        if uniform:
            an, ar = an.detach() * 0, ar.detach() * 0
        gn = ops.gumbel_softmax(an, tau, hard, seed=seeds[0])
        gr = ops.gumbel_softmax(ar, tau, hard, seed=seeds[1])
        logits = self.supernet(x, gn, gr, hard=hard)
        return logits, torch.cat([gn, gr], -2), torch.cat([an, ar], -2)


def build_model(cfg: SearchConfig, space: SearchSpace, fast: bool = True, L: Optional[Tensor] = None) -> SearchModel:
    """The search model, seeded; with ``L`` (normalised) and ``cfg.prior_scale``, the hypernetwork's
    S-dependent part starts at the latency term's own preference (see ``Hypernet.latency_prior``)."""
    torch.manual_seed(cfg.seed)
    supernet = space.supernet(fast=fast)
    if cfg.strength:
        hyper = StrengthHypernet(cfg.hypernet, space.num_edges, space.k, len(OP_TYPES), cfg.strength_knots,
                                 hidden=cfg.hidden, knots=cfg.knots)
    else:
        hyper = build_hypernet(cfg.hypernet, space.num_edges, space.k, len(OP_TYPES), hidden=cfg.hidden,
                               knots=cfg.knots)
    if L is not None and cfg.prior_scale > 0 and cfg.strength:
        hyper.init_latency_prior(L, space.type_index().tolist(), cfg.prior_scale * cfg.kappa_max / cfg.tau_end,
                                 cfg.kappa_max, cfg.strength_curve)
    elif L is not None and cfg.prior_scale > 0:
        scale = cfg.prior_scale * cfg.kappa / cfg.tau_end
        hyper.init_latency_prior(L, space.type_index().tolist(), scale)
        if cfg.fixed_S is not None and cfg.hypernet == "constant":
            # the S-independent baselines get the same start, for their one S
            P = hyper.latency_prior(L, space.type_index().tolist(), len(OP_TYPES), scale)
            with torch.no_grad():
                hyper.A0.add_(torch.tensordot(parse_S(cfg.fixed_S), P, dims=([0], [0])))
    return SearchModel(supernet, hyper)


def _optimizers(cfg: SearchConfig, model: SearchModel):
    w_params = list(model.supernet.parameters())
    a_params = list(model.hypernet.parameters())
    if cfg.optimizer == "adam":
        opt_w = adam(w_params, lr=cfg.lr_w, weight_decay=cfg.wd_w)
    else:
        opt_w = torch.optim.SGD(w_params, lr=cfg.lr_w, momentum=cfg.momentum, weight_decay=cfg.wd_w)
    opt_a = adam(a_params, lr=cfg.lr_a, betas=(0.5, 0.999), weight_decay=cfg.wd_a)
    return opt_w, opt_a


# ------------------------------------------------------------------------------ results
@dataclass
class SearchResult:
    """A finished (or interrupted) search, loaded from its checkpoint."""
    config: SearchConfig
    space: SearchSpace
    hypernet: Hypernet
    supernet: nn.Module
    L_ms: Tensor            # [2E, k] per cell type, in the table's unit
    L: Tensor               # [2E, k] normalised
    table: object           # the LatencyTable
    split: Dict
    history: List[Dict]
    epoch: int
    seconds: float

    @property
    def has_strength(self) -> bool:
        """Whether the hypernetwork takes a strength t (any kappa in [0, kappa_max]) beside S."""
        return isinstance(self.hypernet, StrengthHypernet)

    def check_kappa(self, kappa: Optional[float]) -> Optional[float]:
        """The trade-off to derive at: ``kappa`` (default: the search's ``kappa``), checked against the axis."""
        if not self.has_strength:
            if kappa is not None and abs(kappa - self.config.kappa) > 1e-12:
                raise ValueError(f"this search was trained at one kappa ({self.config.kappa:g}) and has no strength "
                                 f"axis; it cannot give architectures for kappa {kappa:g}")
            return None
        kappa = self.config.kappa if kappa is None else float(kappa)
        self.config.t_at(kappa)  # raises on a kappa outside [0, kappa_max]
        return kappa

    @torch.no_grad()
    def alphas(self, S, kappa: Optional[float] = None) -> Tuple[Tensor, Tensor]:
        """alpha = H_a(S) (and the strength of ``kappa``, default the search's) for any S (a string, a mapping
        or a ``[T]`` tensor), no training."""
        S = parse_S(S) if not isinstance(S, Tensor) or S.dim() == 1 else S
        kappa = self.check_kappa(kappa)
        if kappa is None:
            return self.hypernet(S)
        t = torch.full(S.shape[:-1], self.config.t_at(kappa))
        return self.hypernet(S, t)

    def expected_latency(self, S, kappa: Optional[float] = None) -> float:
        """Lat_S of softmax(alpha(S)) in normalised units."""
        S = parse_S(S)
        an, ar = self.alphas(S, kappa)
        w = torch.cat([an, ar], 0).softmax(-1)
        return float(latency_term(w, self.L, S, self.space.type_index().tolist()))


def _resolve_checkpoint(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no search checkpoint at {p} (run `dartscc-fast search --out {p.parent}` first)")
    return p


def load_search(path: Union[str, os.PathLike]) -> SearchResult:
    """Load a search from its output directory or checkpoint file.

    Raises :class:`~dartscc_fast.checkpoint.CheckpointError` for a file that is not a readable, intact
    search checkpoint of this package (it is read with ``weights_only=True``: never run).
    """
    p = _resolve_checkpoint(path)
    ck = load_checkpoint(p, required=CHECKPOINT_KEYS)
    with checkpoint_part(p, "its settings are not valid for this dartscc_fast"):
        cfg = SearchConfig.from_dict(ck["config"])
        space = SearchSpace.from_dict(ck["space"])
    with checkpoint_part(p, "its weights do not fit the networks it describes"):
        supernet = space.supernet(fast=True)
        supernet.load_state_dict(ck["model"]["supernet"])
        hyper = hypernet_from_config(ck["hypernet_config"])
        hyper.load_state_dict(ck["model"]["hypernet"])
    supernet.eval()
    hyper.eval()
    with checkpoint_part(p, "its latency table does not load"):
        table = LatencyTable.from_dict(ck["latency_table"]) if ck.get("latency_table") else None
    return SearchResult(cfg, space, hyper, supernet, ck["L_ms"], ck["L"], table, ck["split"], ck["history"],
                        ck["epoch"], ck.get("seconds", 0.0))


# ---------------------------------------------------------------------------- plumbing
def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return True


class _Logger:
    FIELDS = ["epoch", "step", "loss", "ce", "lat", "exp_lat", "acc", "tau", "lr_w", "seconds"]

    def __init__(self, cfg: SearchConfig, out: Path, resume_step: int, enabled: bool):
        """The log of a search. Rows are held until :meth:`flush`, which the loop calls after each
        checkpoint: the log never runs ahead of the checkpoint (nor exists before the first one), so a
        resume, which replays the steps after it, never finds them logged twice."""
        self.kind = cfg.log if enabled else "none"
        self.out, self.resume_step = out, resume_step
        self.csv_path = out / "log.csv"
        self.writer = None
        self.kept: List[Dict] = []      # the rows before the checkpoint resumed from
        self.pending: List[Dict] = []   # the rows since the last checkpoint
        if self.kind == "csv":
            if resume_step > 0 and self.csv_path.is_file():
                with open(self.csv_path) as f:
                    self.kept = [r for r in csv.DictReader(f) if int(r["step"]) < resume_step]
        elif self.kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as e:
                raise ValueError("log='tensorboard' needs the tensorboard package (pip install tensorboard); "
                                 "or use log='csv'") from e

    def _open(self) -> None:
        if self.kind == "csv":
            self.file = open(self.csv_path, "w", newline="")
            self.writer = csv.DictWriter(self.file, self.FIELDS)
            self.writer.writeheader()
            self.writer.writerows(self.kept)
        else:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.resume_step)

    def write(self, row: Dict) -> None:
        if self.kind != "none":
            self.pending.append(row)

    def flush(self) -> None:
        """Write the rows held so far (after a checkpoint that covers them)."""
        if self.kind == "none":
            return
        if self.writer is None:
            self._open()
        for row in self.pending:
            if self.kind == "csv":
                self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            else:
                for k, v in row.items():
                    if k not in ("epoch", "step"):
                        self.writer.add_scalar(f"search/{k}", v, row["step"])
        self.pending.clear()
        if self.kind == "csv":
            self.file.flush()
        else:
            self.writer.flush()

    def close(self) -> None:
        # rows after the last checkpoint are dropped: a resume from it replays and logs them
        if self.writer is None:
            return
        if self.kind == "csv":
            self.file.close()
        else:
            self.writer.close()


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64), so (seed, epoch, rank) streams never overlap."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _epoch_loader(dataset, cfg: SearchConfig, epoch: int, rank: int, world: int, salt: int):
    """The batches of one epoch: a seeded permutation, this rank's share, full batches only."""
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                 seed=_seed_for(cfg.seed, salt) & 0x7FFFFFFF, drop_last=True)
    sampler.set_epoch(epoch)
    bs = min(cfg.batch_size, max(len(sampler), 1))
    return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=True)


# ------------------------------------------------------------------------------ the loop
def run_search(cfg: SearchConfig, resume: bool = False, stop_after_epochs: Optional[int] = None,
               loaders=None, table=None, on_step: Optional[Callable[[Dict], None]] = None,
               force: bool = False) -> Path:
    """Run (or, with ``resume``, continue) a search; returns the checkpoint path.

    See :func:`_search` for the arguments.
    """
    return _search(cfg, resume, stop_after_epochs, loaders, table, on_step, force)[0]


def _search(cfg: SearchConfig, resume: bool = False, stop_after_epochs: Optional[int] = None,
            loaders=None, table=None, on_step: Optional[Callable[[Dict], None]] = None,
            force: bool = False) -> Tuple[Path, SearchModel]:
    """The search loop; returns the checkpoint path and the trained model.

    Args:
        resume: continue from ``<out_dir>/checkpoint.pt`` if it exists.
        stop_after_epochs: stop after this many epochs in total (an interruption, for tests).
        loaders: ``datasets.make_loaders`` output to reuse (else built from cfg).
        table: a LatencyTable to reuse (else :func:`latency_table_for`).
        force: start afresh in an ``out_dir`` that holds a search (without it: RunDirError), or, with
            ``resume``, continue with a latency table other than the checkpoint's.

    ``out_dir`` is locked for the run (:func:`dartscc_fast.rundir.claim_run_dir`): a second search into it
    fails at once. A NaN or inf in the loss, the gradients or the parameters stops the search with a
    :class:`NonFiniteError`, before it overwrites the last good checkpoint.
    """
    created_pg = _init_distributed()
    rank, world = _dist_info()
    out = Path(cfg.out_dir)
    try:
        lock = _claim(out, resume, force, rank, world)
    except BaseException:
        if created_pg:
            dist.destroy_process_group()
        raise
    try:
        return _search_locked(cfg, resume, stop_after_epochs, loaders, table, on_step, force, created_pg, rank,
                              world, out)
    finally:
        lock.release()


class NonFiniteError(ValueError):
    """A search met a NaN or inf (in its loss, gradients or parameters) and stopped."""


def _claim(out: Path, resume: bool, force: bool, rank: int, world: int):
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


def _search_locked(cfg: SearchConfig, resume: bool, stop_after_epochs: Optional[int], loaders, table,
                   on_step: Optional[Callable[[Dict], None]], force: bool, created_pg: bool, rank: int, world: int,
                   out: Path) -> Tuple[Path, SearchModel]:
    """The body of :func:`_search`, run with ``out`` locked."""
    space = cfg.get_space()
    if loaders is None:
        loaders = cfg.loaders()
    train_ds, val_ds, split = loaders.train.dataset, loaders.val.dataset, loaders.split
    if table is None:
        table = latency_table_for(cfg, space)
    L_ms, L = supernet_L(table, space, cfg)
    type_index = space.type_index().tolist()
    fixed_S = parse_S(cfg.fixed_S) if cfg.fixed_S else None

    model = build_model(cfg, space, L=L)
    opt_w, opt_a = _optimizers(cfg, model)
    start_epoch, step, history, seconds = 0, 0, [], 0.0
    ck_path = out / CHECKPOINT
    digest = table_digest(table.to_dict())
    mid = None  # a mid-epoch checkpoint's place: {"position", "sums", "rng"}
    if resume and ck_path.is_file():
        ck = load_checkpoint(ck_path, required=CHECKPOINT_KEYS + ("opt_w", "opt_a"))
        with checkpoint_part(ck_path, "its settings are not valid for this dartscc_fast"):
            saved = SearchConfig.from_dict(ck["config"])
        mismatch = [f.name for f in dataclasses.fields(cfg)
                    if f.name not in ("epochs", "out_dir", "progress", "log", "checkpoint_every")
                    and getattr(saved, f.name) != getattr(cfg, f.name)]
        if mismatch:
            raise ValueError(f"--resume: {ck_path} was written by a search with other settings "
                             f"({', '.join(mismatch)}); use another --out or the same settings")
        with checkpoint_part(ck_path, "its latency table does not load"):
            saved_digest = ck.get("latency_digest") or table_digest(ck["latency_table"])
        if saved_digest != digest and not force:
            raise ValueError(f"--resume: the latency table ({cfg.latency_table or 'simulated'}) is not the one "
                             f"{ck_path} was trained with (sha256 {saved_digest[:12]}... then, {digest[:12]}... now); "
                             "resume with that table, or add --force to go on with this one")
        with checkpoint_part(ck_path, "its weights or optimiser states do not fit this search"):
            model.supernet.load_state_dict(ck["model"]["supernet"])
            model.hypernet.load_state_dict(ck["model"]["hypernet"])
            opt_w.load_state_dict(ck["opt_w"])
            opt_a.load_state_dict(ck["opt_a"])
        start_epoch, step, history, seconds = ck["epoch"], ck["step"], ck["history"], ck.get("seconds", 0.0)
        if ck.get("position"):
            mid = {"position": ck["position"], "sums": ck["sums"], "rng": ck["rng"]}
            if len(mid["rng"]) != world:
                raise CheckpointError(ck_path, f"written mid-epoch by {len(mid['rng'])} processes; resume it "
                                               f"with as many (not {world}), or from the end of an epoch")

    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    steps_per_epoch = len(_epoch_loader(train_ds, cfg, 0, rank, world, 1))
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    warm_steps = steps_per_epoch * min(cfg.warmup_epochs, cfg.epochs - 1)
    if steps_per_epoch == 0:
        raise ValueError(f"the train split ({split}) has fewer images than one batch of {cfg.batch_size} "
                         f"per process; lower --batch-size or raise --limit")
    end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, stop_after_epochs)
    logger = _Logger(cfg, out, step, enabled=rank == 0)
    lr_of = lambda s: cfg.lr_w_min + 0.5 * (cfg.lr_w - cfg.lr_w_min) * (1 + math.cos(math.pi * s / total_steps))  # noqa: E731

    def draw_S(gen: torch.Generator, n: int) -> Tensor:
        if fixed_S is not None:
            return fixed_S if not cfg.per_sample else fixed_S.expand(n, -1)
        return sample_S(len(OP_TYPES), n if cfg.per_sample else None, gen)

    def loss_on(x, y, gen, tau, warm: bool) -> Tuple[Tensor, Dict]:
        S = draw_S(gen, x.shape[0])
        t = draw_strength(cfg, gen, x.shape[0])
        seeds = torch.randint(0, 2 ** 62, (2,), generator=gen)
        logits, gamma, alpha = ddp(x, S, tau, cfg.hard, seeds, warm, t)
        ce = F.cross_entropy(logits, y)
        lat_each = latency_term(gamma, L, S, type_index)
        kappa = cfg.kappa_at(t) if t is not None else cfg.kappa
        lat = lat_each.mean()
        loss = ce + (kappa * lat_each).mean() if not warm and (t is not None or cfg.kappa) else ce + 0.0 * lat
        with torch.no_grad():
            exp_lat = latency_term(alpha.softmax(-1), L, S, type_index).mean()
            acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": loss.item(), "ce": ce.item(), "lat": lat.item(), "exp_lat": exp_lat.item(),
                      "acc": acc.item()}

    t_start = time.perf_counter() - seconds
    last_saved = [step if resume and ck_path.is_file() else None]  # the step of the last good checkpoint

    def save(epoch_done: int, position: int, sums: Dict[str, float], rng: Optional[Dict]) -> None:
        """The checkpoint after ``epoch_done`` epochs and ``position`` steps of the next (with every
        process's RNG states and the epoch's running sums when mid-epoch); then the log up to it."""
        rngs = None
        if rng is not None:
            rngs = [rng]
            if world > 1:
                rngs = [None] * world
                dist.all_gather_object(rngs, rng)
        if rank == 0:
            save_checkpoint({
                "config": cfg.to_dict(), "space": space.to_dict(),
                "hypernet_config": model.hypernet.config(),
                "model": {"supernet": model.supernet.state_dict(), "hypernet": model.hypernet.state_dict()},
                "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(),
                "epoch": epoch_done, "step": step, "position": position, "sums": dict(sums), "rng": rngs,
                "history": history, "seconds": time.perf_counter() - t_start,
                "L_ms": L_ms, "L": L, "latency_table": table.to_dict(), "latency_digest": digest,
                "split": split.as_dict(), "world_size": world,
                "finished": position == 0 and epoch_done == cfg.epochs,
            }, ck_path)
            logger.flush()
        last_saved[0] = step

    def stop(what: str, updated: bool = False) -> None:
        kappa = f"kappa {cfg.kappa:g}" + (f", kappa_max {cfg.kappa_max:g}" if getattr(cfg, "strength", False) else "")
        kept = (f"the last good checkpoint, {ck_path} (step {last_saved[0]}), is kept" if last_saved[0] is not None
                else "no checkpoint had been written yet")
        raise NonFiniteError(
            f"search stopped at step {step} (epoch {epoch + 1}): {what} "
            f"{'after the update' if updated else '(the weights were not updated with it)'}. Likely causes: a "
            f"learning rate too high (lr_w {cfg.lr_w:g}, lr_a {cfg.lr_a:g}), too strong a latency term ({kappa}), "
            f"too loose a gradient clip (grad_clip {cfg.grad_clip:g}), or NaN in the data; {kept}")

    def check_step(loss: Tensor, grad_norm: Optional[Tensor] = None) -> None:
        # after backward (on every process alike: DDP has averaged the gradients), before the update
        if not math.isfinite(float(loss.detach())):
            stop(f"the loss is {float(loss.detach())}")
        if grad_norm is not None and not torch.isfinite(grad_norm):
            stop(f"the gradient norm is {float(grad_norm)}")

    try:
        for epoch in range(start_epoch, end_epoch):
            model.train()
            gen = torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, rank, 2))
            torch.manual_seed(_seed_for(cfg.seed, epoch, rank, 3))
            train_iter = iter(_epoch_loader(train_ds, cfg, epoch, rank, world, 1))
            val_key, val_pos = epoch, 0  # the validation batches' order, and how many of them were used
            val_iter = iter(_epoch_loader(val_ds, cfg, epoch, rank, world, 4)) if cfg.protocol == "bilevel" else None
            bar = Progress(total=steps_per_epoch, desc=f"search {epoch + 1}/{cfg.epochs}",
                           enabled=None if cfg.progress and rank == 0 else False)
            sums: Dict[str, float] = {}
            warm = epoch < cfg.warmup_epochs
            first = 0
            if mid is not None and epoch == start_epoch:
                # a mid-epoch checkpoint: the epoch's batches are a function of (seed, epoch), so skip those
                # used, then take up the RNG states saved (last: making the iterators drew from torch's)
                first, sums = mid["position"], dict(mid["sums"])
                for _ in range(first):
                    next(train_iter)
                rng = mid["rng"][rank]
                if val_iter is not None:
                    val_key, val_pos = rng["val_key"], rng["val_pos"]
                    val_iter = iter(_epoch_loader(val_ds, cfg, val_key, rank, world, 4))
                    for _ in range(val_pos):
                        next(val_iter, None)
                gen.set_state(rng["gen"])
                torch.set_rng_state(rng["torch"])
                bar.update(first)
            for i in range(first, steps_per_epoch):
                x, y = next(train_iter)
                tau = temperature(cfg, max(step - warm_steps, 0), total_steps - warm_steps)
                lr = lr_of(step)
                for g in opt_w.param_groups:
                    g["lr"] = lr
                if cfg.protocol == "bilevel" and not warm:
                    try:
                        xv, yv = next(val_iter)
                    except StopIteration:
                        val_key, val_pos = epoch + 1000 * step, 0
                        val_iter = iter(_epoch_loader(val_ds, cfg, val_key, rank, world, 4))
                        xv, yv = next(val_iter)
                    val_pos += 1
                    opt_a.zero_grad(set_to_none=True)
                    loss_a, _ = loss_on(xv, yv, gen, tau, warm)
                    loss_a.backward()
                    check_step(loss_a)
                    opt_a.step()
                    opt_w.zero_grad(set_to_none=True)
                    loss, stats = loss_on(x, y, gen, tau, warm)
                    loss.backward()
                    check_step(loss, nn.utils.clip_grad_norm_(model.supernet.parameters(), cfg.grad_clip))
                    opt_w.step()
                else:
                    opt_w.zero_grad(set_to_none=True)
                    opt_a.zero_grad(set_to_none=True)
                    loss, stats = loss_on(x, y, gen, tau, warm)
                    loss.backward()
                    check_step(loss, nn.utils.clip_grad_norm_(model.supernet.parameters(), cfg.grad_clip))
                    opt_w.step()
                    if not warm:
                        opt_a.step()
                bad = first_nonfinite(model.named_parameters())
                if bad is not None:
                    stop(f"parameter {bad} is not finite", updated=True)
                row = {"epoch": epoch, "step": step, **stats, "tau": tau, "lr_w": lr,
                       "seconds": time.perf_counter() - t_start}
                logger.write(row)
                if on_step is not None:
                    on_step(row)
                for k_, v in stats.items():
                    sums[k_] = sums.get(k_, 0.0) + v
                step += 1
                bar.set(loss=stats["loss"], acc=stats["acc"], lat=stats["exp_lat"], tau=tau)
                bar.update()
                if cfg.checkpoint_every is not None and step % cfg.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                    save(epoch, i + 1, sums, {"gen": gen.get_state(), "torch": torch.get_rng_state(),
                                              "val_key": val_key, "val_pos": val_pos})
            bar.close()
            history.append({"epoch": epoch, **{k_: v / steps_per_epoch for k_, v in sums.items()},
                            "tau": tau, "seconds": time.perf_counter() - t_start})
            if world > 1:
                # DDP syncs buffers at the start of each forward, so after the last step the
                # replicas' BatchNorm statistics differ: take rank 0's, as the next forward would
                for b in model.buffers():
                    dist.broadcast(b, 0)
            save(epoch + 1, 0, {}, None)
            if world > 1:
                dist.barrier()
    finally:
        logger.close()
        if created_pg:
            dist.destroy_process_group()
    return ck_path, model


# --------------------------------------------------------------------------- DDP helper
def _ddp_worker(rank: int, world: int, port: int, cfg_dict: Dict, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = SearchConfig.from_dict(cfg_dict)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, model = _search(cfg)
        # every rank saves what it holds, so the replicas can be compared
        torch.save(model.state_dict(), Path(result_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_ddp(cfg: SearchConfig, world: int = 2, port: int = 29533) -> None:
    """Run a search in `world` CPU processes (gloo) with torch.multiprocessing; as torchrun would."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(world, port, cfg.to_dict(), cfg.out_dir), nprocs=world, join=True)


# ----------------------------------------------------------------------------------- CLI
def add_config_arguments(p, defaults: SearchConfig = SearchConfig()) -> None:
    """The SearchConfig fields as command-line options (shared by `search` and `demo`)."""
    d = defaults
    p.add_argument("--space", default=d.space, help="search space preset (fmnist-paper, darts-cifar)")
    p.add_argument("--channels", type=arg(POSITIVE_INT), default=None, help="override the space's initial channels C")
    p.add_argument("--data", default=d.data, help="fmnist or cifar10")
    p.add_argument("--data-root", default=d.data_root, help="data directory (default: the shipped subset)")
    p.add_argument("--limit", type=arg(_SEARCH_CHECKS["limit"]), default=d.limit, help="use only the first N images")
    p.add_argument("--split", type=arg(FRACTION), nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of the images in the seeded train / validation / test split")
    p.add_argument("--epochs", type=arg(POSITIVE_INT), default=d.epochs, help="in all, warm-up included")
    p.add_argument("--warmup-epochs", type=arg(NON_NEGATIVE_INT), default=None,
                   help="train the weights alone first, on uniformly drawn architectures (default: half the epochs)")
    p.add_argument("--batch-size", type=arg(POSITIVE_INT), default=d.batch_size, help="per process")
    p.add_argument("--max-steps-per-epoch", type=arg(STEPS), default=d.max_steps_per_epoch,
                   help="cap the steps of each epoch (default: no cap)")
    p.add_argument("--hypernet", default=d.hypernet, choices=["linear", "pwl", "mlp", "constant"])
    p.add_argument("--per-sample", action="store_true", help="S and Gumbel noise per sample (DARTS-CC)")
    p.add_argument("--fixed-S", default=d.fixed_S, help="train for one fixed S instead of S ~ Dirichlet(1)")
    p.add_argument("--kappa", type=arg(NON_NEGATIVE), default=d.kappa,
                   help="weight of the normalised latency term: with the strength axis, the trade-off derive and "
                        "report take by default; with --no-strength, the one weight searched with")
    p.add_argument("--no-strength", action="store_true",
                   help="search one fixed --kappa (the seeds) instead of every kappa in [0, --kappa-max]")
    p.add_argument("--kappa-max", type=float, default=d.kappa_max,
                   help="the strength axis's strongest latency weight (t = 1)")
    p.add_argument("--strength-knots", type=int, default=d.strength_knots,
                   help="hypernetworks interpolated along the strength axis")
    p.add_argument("--strength-zero-share", type=arg(FRACTION), default=d.strength_zero_share,
                   help="share of the strength draws at t = 0 exactly (no latency term); the rest uniform")
    p.add_argument("--latency-table", default=d.latency_table, help="JSON table from `dartscc-fast profile`")
    p.add_argument("--normalise", choices=NORMALISATIONS, default=d.normalise,
                   help="divide L by the uniform or the all-cheapest architecture's latency, or each operation "
                        "type's columns by that type's (S alone then prices a type); type-stride: type, then "
                        "pooling and convolution drawn towards the same total on each stride's edges")
    p.add_argument("--stride-balance", type=arg(FRACTION), default=d.stride_balance,
                   help="type-stride: 0 keeps type's prices, 1 gives pooling and convolution the same total "
                        "on each stride's edges")
    p.add_argument("--latency-device", default=d.latency_device,
                   help="without a table: simulated device sim:<preset> (default sim:mobile-cpu)")
    p.add_argument("--tau", type=arg(POSITIVE), nargs=2, default=(d.tau_start, d.tau_end), metavar=("START", "END"))
    p.add_argument("--tau-schedule", choices=["linear", "exp"], default=d.tau_schedule)
    p.add_argument("--soft", action="store_true", help="soft Gumbel-Softmax (every op runs) instead of hard")
    p.add_argument("--protocol", choices=["single", "bilevel"], default=d.protocol)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer)
    p.add_argument("--lr-w", type=arg(POSITIVE), default=d.lr_w, help="the weights' learning rate (cosine from it)")
    p.add_argument("--lr-a", type=arg(POSITIVE), default=d.lr_a, help="the hypernetwork's learning rate")
    p.add_argument("--grad-clip", type=arg(POSITIVE), default=d.grad_clip, help="the weights' gradient-norm clip")
    p.add_argument("--seed", type=arg(NON_NEGATIVE_INT), default=d.seed)
    p.add_argument("--checkpoint-every", type=arg(POSITIVE_INT), default=d.checkpoint_every,
                   help="also checkpoint every N steps within an epoch (as well as at each epoch's end)")
    p.add_argument("--log", choices=["csv", "tensorboard", "none"], default=d.log)


def config_from_args(args, out_dir: str) -> SearchConfig:
    return SearchConfig(
        space=args.space, space_overrides={"C": args.channels} if args.channels is not None else {}, data=args.data,
        data_root=args.data_root, limit=args.limit, split=tuple(args.split), epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
        max_steps_per_epoch=args.max_steps_per_epoch, hypernet=args.hypernet, per_sample=args.per_sample,
        fixed_S=args.fixed_S, kappa=args.kappa, strength=not args.no_strength and args.hypernet != "constant",
        kappa_max=args.kappa_max, strength_knots=args.strength_knots,
        strength_zero_share=args.strength_zero_share,
        latency_table=args.latency_table, normalise=args.normalise,
        stride_balance=args.stride_balance,
        latency_device=args.latency_device, tau_start=args.tau[0], tau_end=args.tau[1],
        tau_schedule=args.tau_schedule, hard=not args.soft, protocol=args.protocol, optimizer=args.optimizer,
        lr_w=args.lr_w, lr_a=args.lr_a, grad_clip=args.grad_clip, seed=args.seed, out_dir=out_dir, log=args.log,
        checkpoint_every=getattr(args, "checkpoint_every", SearchConfig.checkpoint_every))


def register(sub) -> None:
    p = sub.add_parser("search", help="train the supernet and the hypernetwork (one run, every S)",
                       description="Train the supernet and the hypernetwork alpha = H(S) with Gumbel-Softmax "
                                   "and the latency regulariser. Data-parallel under torchrun (gloo on CPU, "
                                   "nccl on GPU): torchrun --nproc_per_node 2 -m dartscc_fast.cli search ...")
    add_config_arguments(p)
    p.add_argument("--out", default="runs/search", help="output directory (checkpoint, log)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--force", action="store_true",
                   help="start a new search in an --out that holds one (replacing it at the first checkpoint); "
                        "with --resume, go on with a latency table other than the checkpoint's")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = config_from_args(args, args.out)
    path = run_search(cfg, resume=args.resume, force=args.force)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now; torchrun set RANK
        r = load_search(path)
        last = r.history[-1] if r.history else {}
        print(f"search done: {r.epoch} epochs, {r.seconds:.0f} s; last epoch loss {last.get('loss', 0):.3f}, "
              f"train acc {last.get('acc', 0):.2%}, expected latency {last.get('exp_lat', 0):.3f} "
              f"(normalised); checkpoint {path}")
    return 0
