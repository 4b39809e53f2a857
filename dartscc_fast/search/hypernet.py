"""The hypernetwork alpha = H_a(S): architecture logits as a function of the complexity vector S.

S lies on the simplex, one component per operation type, in the order of
:data:`dartscc_fast.nn.primitives.OP_TYPES` (pool, identity, conv); S_t is the
latency-regularisation weight of type t. Every interface names the components
(``pool=0.7,identity=0.15,conv=0.15``) because one of the seed drafts gives
them in the opposite order.

A hypernetwork returns one row of k logits per edge, separately for the normal
and the reduction cell: ``forward(S)`` with S ``[T]`` gives two ``[E, k]``
tensors, with S ``[N, T]`` (per-sample S, as DARTS-CC) two ``[N, E, k]``.
"""
from __future__ import annotations

import abc
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from dartscc_fast.nn.primitives import OP_TYPES

__all__ = ["PROFILES", "parse_S", "format_S", "sample_S", "simplex_grid", "Hypernet", "LinearHypernet",
           "PiecewiseLinearHypernet", "MLPHypernet", "ConstantHypernet", "HYPERNETS", "build_hypernet",
           "StrengthHypernet", "kappa_of_t", "t_of_kappa", "STRENGTH_CURVE", "hypernet_from_config"]

#: The slides' three profiles, with named components.
PROFILES: Dict[str, Dict[str, float]] = {
    "A": {"pool": 1 / 3, "identity": 1 / 3, "conv": 1 / 3},   # uniform
    "B": {"pool": 0.15, "identity": 0.15, "conv": 0.70},       # convolutions penalised
    "C": {"pool": 0.70, "identity": 0.15, "conv": 0.15},       # pooling penalised
}
PROFILE_NAMES = {"A": "uniform", "B": "conv penalised", "C": "pool penalised"}

#: How far from 1 the components may sum (0.33 + 0.33 + 0.33 is accepted) before S is rejected.
SIMPLEX_TOL = 0.02

SLike = Union[str, Mapping[str, float], Sequence[float], Tensor]


# ----------------------------------------------------------------------------- S itself
def parse_S(spec: SLike, types: Sequence[str] = OP_TYPES) -> Tensor:
    """A point of the simplex as a float32 ``[T]`` tensor, components in the order of `types`.

    Accepts ``"pool=0.7,identity=0.15,conv=0.15"``, a profile name (``"A"``,
    ``"B"``, ``"C"``), a mapping ``{"pool": 0.7, ...}``, or a sequence / tensor
    already in `types` order. Every component must be named exactly once, be
    finite and >= 0, and the sum must be 1 within ``SIMPLEX_TOL``; the result
    is renormalised to sum exactly to 1.

    Raises:
        ValueError: naming what is wrong (unknown or missing name, wrong length,
            negative component, not on the simplex).
    """
    types = list(types)
    if isinstance(spec, str):
        s = spec.strip()
        if s.upper() in PROFILES and "=" not in s:
            return parse_S(PROFILES[s.upper()], types)
        if not s:
            raise ValueError(f"S is empty; expected e.g. {format_S([1 / len(types)] * len(types), types)!r}")
        values: Dict[str, float] = {}
        for part in s.split(","):
            if "=" not in part:
                raise ValueError(f"S component {part.strip()!r} must be written name=value, e.g. "
                                 f"'{types[0]}=0.5'; types are {types}")
            name, val = (p.strip() for p in part.split("=", 1))
            if name in values:
                raise ValueError(f"S names {name!r} twice")
            try:
                values[name] = float(val)
            except ValueError:
                raise ValueError(f"S component {name}={val!r} is not a number") from None
        return parse_S(values, types)
    if isinstance(spec, Mapping):
        unknown = [n for n in spec if n not in types]
        if unknown:
            raise ValueError(f"S has unknown component(s) {unknown}; the operation types are {types}")
        missing = [t for t in types if t not in spec]
        if missing:
            raise ValueError(f"S is missing component(s) {missing}; name all of {types}")
        vec = torch.tensor([float(spec[t]) for t in types], dtype=torch.float64)
    else:
        vec = torch.as_tensor(spec, dtype=torch.float64).detach().cpu()
        if vec.dim() != 1 or vec.numel() != len(types):
            raise ValueError(f"S must have {len(types)} components ({', '.join(types)}), "
                             f"got shape {list(vec.shape)}")
    if not torch.isfinite(vec).all():
        raise ValueError(f"S components must be finite, got {format_S(vec, types, digits=4)}")
    if (vec < 0).any():
        raise ValueError(f"S components must be >= 0 (S lies on the simplex), got {format_S(vec, types, digits=4)}")
    total = float(vec.sum())
    if abs(total - 1.0) > SIMPLEX_TOL:
        raise ValueError(f"S must lie on the simplex: its components sum to {total:.4g}, not 1 "
                         f"(tolerance {SIMPLEX_TOL}); got {format_S(vec, types, digits=4)}")
    return (vec / total).float()


def format_S(S: Union[Tensor, Sequence[float]], types: Sequence[str] = OP_TYPES, digits: int = 2) -> str:
    """``pool=0.70,identity=0.15,conv=0.15``."""
    vals = S.tolist() if isinstance(S, Tensor) else list(S)
    return ",".join(f"{t}={v:.{digits}f}" for t, v in zip(types, vals))


def sample_S(num_types: int, n: Optional[int] = None, generator: Optional[torch.Generator] = None,
             concentration: float = 1.0) -> Tensor:
    """S ~ Dirichlet(concentration, ..., concentration): ``[T]``, or ``[n, T]`` when n is given.

    Drawn through ``generator`` (Gamma variates by normalised exponentials for
    concentration 1), so a seeded generator gives the same S on every machine.
    """
    shape = (num_types,) if n is None else (n, num_types)
    if concentration == 1.0:
        u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_min(1e-12)
        e = -torch.log(u)
    else:
        alpha = torch.full(shape, float(concentration), dtype=torch.float64)
        e = torch._standard_gamma(alpha)  # no generator argument: seeds through the global RNG
    return (e / e.sum(-1, keepdim=True)).float()


def simplex_grid(steps: int, num_types: int = len(OP_TYPES)) -> Tensor:
    """Every point of the simplex with components in {0, 1/steps, ..., 1}: ``[P, T]``."""
    if steps < 1:
        raise ValueError(f"simplex grid steps must be >= 1, got {steps}")

    def comps(total: int, parts: int) -> List[List[int]]:
        if parts == 1:
            return [[total]]
        return [[i] + rest for i in range(total, -1, -1) for rest in comps(total - i, parts - 1)]

    return torch.tensor(comps(steps, num_types), dtype=torch.float32) / steps


# --------------------------------------------------------------------------- the hypernets
class Hypernet(nn.Module, metaclass=abc.ABCMeta):
    """Base: ``forward(S) -> (alpha_normal, alpha_reduce)``.

    Subclasses implement :meth:`delta`, the S-dependent part; the bias ``A0``
    (``[2, E, k]``: normal and reduction rows) is the S-independent part.
    """
    kind = "base"

    def __init__(self, num_edges: int, k: int, num_types: int = len(OP_TYPES), init_std: float = 1e-3):
        super().__init__()
        self.num_edges, self.k, self.num_types = int(num_edges), int(k), int(num_types)
        self.A0 = nn.Parameter(init_std * torch.randn(2, self.num_edges, self.k))

    def config(self) -> Dict:
        """Constructor arguments, so :func:`build_hypernet` can rebuild it."""
        return {"kind": self.kind, "num_edges": self.num_edges, "k": self.k, "num_types": self.num_types}

    def check_S(self, S: Tensor) -> Tensor:
        if S.dim() not in (1, 2) or S.shape[-1] != self.num_types:
            raise ValueError(f"hypernet: S must have shape [{self.num_types}] or [N, {self.num_types}] "
                             f"(components {', '.join(OP_TYPES[:self.num_types])}), got {list(S.shape)}")
        return S.to(self.A0)

    @abc.abstractmethod
    def delta(self, S: Tensor) -> Tensor:
        """The S-dependent part of the logits, ``[..., 2, E, k]``."""

    @staticmethod
    def latency_prior(L: Tensor, type_index: Sequence[int], num_types: int, scale: float) -> Tensor:
        """``P [T, 2, E, k]``: ``P[t, c, e, m] = -scale * L[c E + e, m]`` where m has type t, else 0.

        ``sum_t S_t P_t`` are the logits the latency term alone favours for S
        (``-scale * S_type(m) * L[e, m]``), the part of alpha(S) the search
        would otherwise have to discover from S's correlation with the loss.
        """
        two_e, k = L.shape
        P = torch.zeros(num_types, 2, two_e // 2, k)
        for m, t in enumerate(type_index):
            if int(t) >= 0:
                P[int(t), :, :, m] = -scale * L[:, m].reshape(2, two_e // 2).float()
        return P

    @abc.abstractmethod
    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale: float) -> None:
        """Start the S-dependent part at :meth:`latency_prior` (a no-op for S-independent forms)."""

    def forward(self, S: Tensor) -> Tuple[Tensor, Tensor]:
        S = self.check_S(S)
        alpha = self.A0 + self.delta(S)
        return alpha[..., 0, :, :], alpha[..., 1, :, :]


class LinearHypernet(Hypernet):
    """alpha = A_0 + sum_t S_t A_t."""
    kind = "linear"

    def __init__(self, num_edges: int, k: int, num_types: int = len(OP_TYPES), init_std: float = 1e-3):
        super().__init__(num_edges, k, num_types, init_std)
        self.A = nn.Parameter(torch.zeros(self.num_types, 2, self.num_edges, self.k))

    def delta(self, S: Tensor) -> Tensor:
        return torch.tensordot(S, self.A, dims=([-1], [0]))

    @torch.no_grad()
    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale: float) -> None:
        self.A.copy_(self.latency_prior(L, type_index, self.num_types, scale))


class PiecewiseLinearHypernet(Hypernet):
    """DARTS-CC's piecewise-linear hypernetwork, one per component of S, summed.

    alpha = A_0 + sum_t sum_j hat_j(S_t) A_(t, j), with hat functions on
    ``knots`` evenly spaced points of [0, 1] (linear interpolation between
    learned logit tables, as DARTS-CC interpolates between pivot lambdas).
    """
    kind = "pwl"

    def __init__(self, num_edges: int, k: int, num_types: int = len(OP_TYPES), knots: int = 4,
                 init_std: float = 1e-3):
        super().__init__(num_edges, k, num_types, init_std)
        if knots < 2:
            raise ValueError(f"PiecewiseLinearHypernet: knots must be >= 2, got {knots}")
        self.knots = int(knots)
        self.A = nn.Parameter(torch.zeros(self.num_types * self.knots, 2, self.num_edges, self.k))

    def config(self) -> Dict:
        return {**super().config(), "knots": self.knots}

    def features(self, S: Tensor) -> Tensor:
        grid = torch.linspace(0, 1, self.knots, dtype=S.dtype, device=S.device)
        hats = (1 - (S[..., None] - grid).abs() * (self.knots - 1)).clamp_min(0)  # [..., T, K]
        return hats.flatten(-2)

    def delta(self, S: Tensor) -> Tensor:
        return torch.tensordot(self.features(S), self.A, dims=([-1], [0]))

    @torch.no_grad()
    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale: float) -> None:
        # the hats interpolate s linearly: sum_j hat_j(s) x_j = s
        P = self.latency_prior(L, type_index, self.num_types, scale)
        grid = torch.linspace(0, 1, self.knots)
        self.A.copy_((P[:, None] * grid.view(1, -1, 1, 1, 1)).flatten(0, 1))


class MLPHypernet(Hypernet):
    """alpha = A_0 + readout(tanh(W S + b)): a small MLP with `hidden` units."""
    kind = "mlp"

    def __init__(self, num_edges: int, k: int, num_types: int = len(OP_TYPES), hidden: int = 16,
                 init_std: float = 1e-3):
        super().__init__(num_edges, k, num_types, init_std)
        self.hidden = int(hidden)
        self.inner = nn.Linear(self.num_types, self.hidden)
        with torch.no_grad():  # features of order 1 over the simplex, centred at its middle
            self.inner.weight.normal_(0, 2.0)
            self.inner.bias.copy_(-self.inner.weight.sum(1) / self.num_types)
        self.A = nn.Parameter(torch.zeros(self.hidden + self.num_types, 2, self.num_edges, self.k))

    def config(self) -> Dict:
        return {**super().config(), "hidden": self.hidden}

    def features(self, S: Tensor) -> Tensor:
        # the linear terms are kept (a skip connection), so the MLP can only add to the linear form
        return torch.cat([S, torch.tanh(self.inner(S))], -1)

    def delta(self, S: Tensor) -> Tensor:
        return torch.tensordot(self.features(S), self.A, dims=([-1], [0]))

    @torch.no_grad()
    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale: float) -> None:
        self.A.zero_()
        self.A[:self.num_types].copy_(self.latency_prior(L, type_index, self.num_types, scale))


class ConstantHypernet(Hypernet):
    """Plain DARTS / FBNet logits that ignore S: the baselines' 'hypernetwork'."""
    kind = "constant"

    def delta(self, S: Tensor) -> Tensor:
        return self.A0.new_zeros(S.shape[:-1] + self.A0.shape)

    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale: float) -> None:
        pass


# ------------------------------------------------------------------------ the strength axis
#: The default strength curve's steepness: kappa(1/2) is about kappa_max / 11 (see :func:`kappa_of_t`).
STRENGTH_CURVE = math.log(100.0)


def kappa_of_t(t: Union[float, Tensor], kappa_max: float, curve: float = STRENGTH_CURVE) -> Union[float, Tensor]:
    """The latency weight at strength ``t`` in [0, 1]: ``kappa_max * (e^(curve t) - 1) / (e^curve - 1)``.

    0 at t = 0 (DARTS: no latency term), kappa_max at t = 1, linear near 0 and
    geometric above, so uniform draws of t spend as many steps on weak
    trade-offs (kappa below 1) as on strong ones.
    """
    if isinstance(t, Tensor):
        return kappa_max * torch.expm1(curve * t) / math.expm1(curve)
    return kappa_max * math.expm1(curve * float(t)) / math.expm1(curve)


def t_of_kappa(kappa: float, kappa_max: float, curve: float = STRENGTH_CURVE) -> float:
    """The strength whose latency weight is ``kappa`` (the inverse of :func:`kappa_of_t`)."""
    if not (math.isfinite(kappa) and 0.0 <= kappa <= kappa_max):
        raise ValueError(f"kappa must be in [0, kappa_max = {kappa_max:g}] for this search's strength axis, "
                         f"got {kappa}")
    return math.log1p(kappa / kappa_max * math.expm1(curve)) / curve


class StrengthHypernet(nn.Module):
    """alpha(S, t) = sum_j hat_j(t) H_j(S): one S-hypernetwork per knot of the strength t in [0, 1].

    t sets how much latency counts at all (``kappa_of_t``), S how it is shared
    among the operation types. At t = 0 the family is DARTS (the cross-entropy
    alone), at t = 1 the strongest trade-off, so one search spans the front
    from the accurate end to the cheapest. Linear interpolation between the
    knots' hypernetworks, as DARTS-CC interpolates between pivot lambdas.
    ``forward(S, t)``: S ``[T]`` with t a float or 0-dim tensor, or S ``[N, T]``
    with t ``[N]``.
    """
    kind = "strength"

    def __init__(self, base: str, num_edges: int, k: int, num_types: int = len(OP_TYPES), strength_knots: int = 5,
                 **base_kwargs):
        super().__init__()
        if base in ("constant", "strength"):
            raise ValueError(f"a strength axis needs an S-dependent hypernetwork, got base {base!r}")
        if strength_knots < 2:
            raise ValueError(f"strength_knots must be >= 2, got {strength_knots}")
        self.base, self.strength_knots = base, int(strength_knots)
        self.nets = nn.ModuleList(build_hypernet(base, num_edges, k, num_types, **base_kwargs)
                                  for _ in range(self.strength_knots))
        first = self.nets[0]
        self.num_edges, self.k, self.num_types = first.num_edges, first.k, first.num_types
        # the base's own settings (knots, hidden) as its config names them, for hypernet_from_config
        self.base_kwargs = {k_: v for k_, v in first.config().items() if k_ not in ("kind", "num_edges", "k",
                                                                                    "num_types")}

    def config(self) -> Dict:
        return {"kind": self.kind, "base": self.base, "num_edges": self.num_edges, "k": self.k,
                "num_types": self.num_types, "strength_knots": self.strength_knots, **self.base_kwargs}

    def knots(self) -> Tensor:
        return torch.linspace(0, 1, self.strength_knots)

    def hats(self, t: Tensor) -> Tensor:
        """``[..., K]`` interpolation weights of the knots at t (they sum to 1)."""
        grid = self.knots().to(t)
        return (1 - (t[..., None] - grid).abs() * (self.strength_knots - 1)).clamp_min(0)

    def forward(self, S: Tensor, t: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
        ref = self.nets[0].A0
        t = torch.as_tensor(t, dtype=ref.dtype, device=ref.device)
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t > 1).any()):
            raise ValueError(f"strength t must lie in [0, 1], got {t.tolist()}")
        if t.dim() != S.dim() - 1:
            raise ValueError(f"strength: S {list(S.shape)} needs t of shape {list(S.shape[:-1])}, "
                             f"got {list(t.shape)}")
        h = self.hats(t)                                          # [..., K]
        outs = [net(S) for net in self.nets]                      # K x ([..., E, k], [..., E, k])
        mix = lambda xs: (torch.stack(xs, -1) * h[..., None, None, :]).sum(-1)  # noqa: E731
        return mix([o[0] for o in outs]), mix([o[1] for o in outs])

    @torch.no_grad()
    def init_latency_prior(self, L: Tensor, type_index: Sequence[int], scale_at_kappa_max: float,
                           kappa_max: float, curve: float = STRENGTH_CURVE) -> None:
        """Each knot's hypernetwork starts at the latency term's preference at that knot's kappa."""
        for tj, net in zip(self.knots().tolist(), self.nets):
            net.init_latency_prior(L, type_index, scale_at_kappa_max * kappa_of_t(tj, kappa_max, curve) / kappa_max)


HYPERNETS = {c.kind: c for c in (LinearHypernet, PiecewiseLinearHypernet, MLPHypernet, ConstantHypernet)}
#: The default form, chosen by measurement (bench/compare_hypernets.py: the mean search objective
#: over a simplex grid of the derived architectures, on the validation split, was 1.122 for pwl,
#: 1.151 for mlp, 1.217 for linear, with 12, 7 and 7 distinct architectures; one seed).
DEFAULT_HYPERNET = "pwl"


def build_hypernet(kind: str = DEFAULT_HYPERNET, num_edges: int = 14, k: int = 3,
                   num_types: int = len(OP_TYPES), **kwargs) -> Hypernet:
    """A hypernetwork by kind: 'linear', 'pwl' (piecewise-linear, DARTS-CC), 'mlp' or 'constant'."""
    if kind not in HYPERNETS:
        raise ValueError(f"unknown hypernetwork {kind!r}; choose one of {sorted(HYPERNETS)}")
    cls = HYPERNETS[kind]
    allowed = {"linear": (), "constant": (), "pwl": ("knots",), "mlp": ("hidden",)}[kind]
    extra = {k_: v for k_, v in kwargs.items() if k_ in allowed or k_ == "init_std"}
    return cls(num_edges, k, num_types, **extra)


def hypernet_from_config(config: Dict) -> Union[Hypernet, StrengthHypernet]:
    """Rebuild a hypernetwork from its :meth:`config` (the S-only kinds, or ``'strength'``)."""
    config = dict(config)
    kind = config.pop("kind")
    if kind == StrengthHypernet.kind:
        return StrengthHypernet(config.pop("base"), **config)
    return build_hypernet(kind, **config)
