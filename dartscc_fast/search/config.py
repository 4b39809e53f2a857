"""The search's settings: :class:`SearchConfig`, every field checked when it is made."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from dartscc_fast.data.datasets import check_fractions, make_loaders
from dartscc_fast.latency import NORMALISATIONS, STRIDE_BALANCE
from dartscc_fast.search.hypernet import DEFAULT_HYPERNET, STRENGTH_CURVE, kappa_of_t, parse_S, t_of_kappa
from dartscc_fast.space import SearchSpace, get_space
from dartscc_fast.validate import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    STEPS,
    Float,
    Int,
    check_fields,
)

#: Batch size of the latency tables a search makes for itself (the seeds' training batch).
TABLE_BATCH = 64

#: The numeric fields' ranges, checked first when a SearchConfig is made (the CLI's types use the same).
SEARCH_CHECKS = {
    "limit": Int(1, optional=True, none="every image"), "epochs": POSITIVE_INT,
    "warmup_epochs": Int(0, optional=True, none="half the epochs"),
    "batch_size": POSITIVE_INT, "max_steps_per_epoch": STEPS, "hidden": POSITIVE_INT, "knots": Int(2),
    "prior_scale": NON_NEGATIVE, "kappa": NON_NEGATIVE, "stride_balance": FRACTION, "tau_start": POSITIVE,
    "tau_end": POSITIVE, "lr_w": POSITIVE, "lr_w_min": NON_NEGATIVE, "wd_w": NON_NEGATIVE,
    "momentum": Float(0, 1, hi_open=True), "lr_a": POSITIVE, "wd_a": NON_NEGATIVE, "grad_clip": POSITIVE,
    "seed": NON_NEGATIVE_INT, "checkpoint_every": Int(1, optional=True, none="at the ends of epochs only"),
    "kappa_max": POSITIVE, "strength_curve": POSITIVE, "strength_knots": Int(2), "strength_zero_share": FRACTION,
    "free_op_dropout": Float(0, 1, hi_open=True),
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
    # every step after the warm-up also trains the accurate end (t = 0, a second S draw) on the same batch, as
    # BigNAS's sandwich rule trains the largest child every step: twice the step's work, and the family then
    # reaches the DARTS search's latency and accuracy (docs/design.md). None: on; off without the strength axis
    sandwich: Optional[bool] = None
    # P-DARTS's guard against parameter-free candidates winning early: a drawn pool (any stride) or identity
    # (stride 1) is dropped from the supernet with this probability at the start, decayed as P-DARTS decays it
    # (schedules.free_op_dropout_at); the latency term still prices the drawn op. 0: off (docs/design.md)
    free_op_dropout: float = 0.0
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
        check_fields(self, SEARCH_CHECKS)
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
        # stored resolved, as warmup_epochs (a resume compares what ran); without the axis there is no
        # accurate end to train apart, so a fixed-kappa search runs without
        self.sandwich = bool(self.strength and (self.sandwich is None or self.sandwich))
        if self.fixed_S is not None:
            parse_S(self.fixed_S)
        if self.free_op_dropout > 0 and not self.hard:
            raise ValueError("free_op_dropout drops the drawn candidate of each edge and needs hard=True (the "
                             "soft relaxation runs every candidate)")

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        # a search saved before the strength axis existed searched one fixed kappa
        d.setdefault("strength", False)
        d.setdefault("strength_zero_share", 0.0)  # before it existed, t was uniform
        d.setdefault("sandwich", False)  # before it existed, one draw per step
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
