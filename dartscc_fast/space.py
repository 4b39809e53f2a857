"""Search spaces: DARTS cells, their edges, genotypes and the discrete networks derived from them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from dartscc_fast import reference
from dartscc_fast.nn import supernet as layout  # its edge_pairs, is_reduction, num_edges: methods here
from dartscc_fast.nn.mixed_op import MixedOp, fuse_preprocessing
from dartscc_fast.nn.primitives import (
    DARTS_PRIMITIVES,
    FMNIST_PRIMITIVES,
    OP_TYPES,
    ReLUConvBN,
    SubsampledFactorizedReduce,
    check_primitives,
    derived_op,
    op_type,
)
from dartscc_fast.nn.supernet import Network, edge_stride


@dataclass(frozen=True)
class EdgeSpec:
    """One mixed-op edge of the supernet, with the shape its candidates see."""
    cell: int          # cell index in the network
    reduction: bool    # whether the cell is a reduction cell
    edge: int          # edge index inside the cell (the row of the cell type's logits)
    src: int           # input state (0, 1: the cell inputs; 2..: intermediate nodes)
    dst: int           # the intermediate node it feeds (2..steps+1)
    C: int             # channels in and out
    H: int             # input height
    W: int             # input width
    stride: int


@dataclass(frozen=True)
class SearchSpace:
    """A DARTS search space: cells of `steps` nodes over `primitives`.

    The cells at ``layers // 3`` and ``2 * layers // 3`` are reduction cells
    (DARTS layout); every cell type has its own row of logits per edge.
    """
    name: str
    primitives: Tuple[str, ...]
    layers: int = 3
    steps: int = 4
    multiplier: int = 4
    C: int = 16
    stem_multiplier: int = 3
    in_channels: int = 1
    input_size: int = 28
    num_classes: int = 10

    def __post_init__(self):
        check_primitives(self.primitives)
        for name in ("layers", "steps", "multiplier", "C", "stem_multiplier", "in_channels", "input_size",
                     "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchSpace.{name} must be >= 1, got {getattr(self, name)}")
        if self.multiplier > self.steps:
            raise ValueError(f"SearchSpace.multiplier ({self.multiplier}) cannot exceed steps ({self.steps})")

    # -- sizes ---------------------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.primitives)

    @property
    def num_edges(self) -> int:
        """Edges per cell (and rows of logits per cell type)."""
        return layout.num_edges(self.steps)

    def is_reduction(self, cell: int) -> bool:
        return layout.is_reduction(self.layers, cell)

    def op_types(self) -> List[Optional[str]]:
        """The op type of each primitive ('pool', 'identity', 'conv'; None for 'none')."""
        return [op_type(p) for p in self.primitives]

    def type_index(self) -> Tensor:
        """``[k]`` int64: each primitive's index in OP_TYPES, -1 for 'none'."""
        return torch.tensor([OP_TYPES.index(t) if t is not None else -1 for t in self.op_types()],
                            dtype=torch.long)

    def edge_pairs(self) -> List[Tuple[int, int]]:
        """(src, dst) of each edge of a cell, in logit-row order."""
        return layout.edge_pairs(self.steps)

    def row_strides(self) -> List[int]:
        """The stride of each row of ``[2E, k]`` per-cell-type tensors (normal rows, then reduction rows)."""
        return [edge_stride(red, src) for red in (False, True) for src, _ in self.edge_pairs()]

    def row_cells(self) -> List[int]:
        """The cell type of each row of ``[2E, k]`` per-cell-type tensors: 0 normal, 1 reduction."""
        return [0] * self.num_edges + [1] * self.num_edges

    def edges(self) -> List[EdgeSpec]:
        """Every mixed-op edge of the supernet, cell by cell, in the network's order."""
        out = []
        H = W = self.input_size
        C_curr = self.C
        for cell in range(self.layers):
            red = self.is_reduction(cell)
            if red:
                C_curr *= 2
            Ho, Wo = ((H - 1) // 2 + 1, (W - 1) // 2 + 1) if red else (H, W)
            for e, (src, dst) in enumerate(self.edge_pairs()):
                stride = edge_stride(red, src)
                h, w = (H, W) if src < 2 else (Ho, Wo)
                out.append(EdgeSpec(cell, red, e, src, dst, C_curr, h, w, stride))
            H, W = Ho, Wo
        return out

    # -- networks --------------------------------------------------------------------
    def supernet(self, fast: bool = True) -> Union[Network, reference.Network]:
        """The search network: :class:`dartscc_fast.nn.Network` with the fast MixedOp, its cells fused
        (:func:`~dartscc_fast.nn.mixed_op.fuse_preprocessing`). ``fast=False``: the pure-PyTorch oracle's
        network (:class:`dartscc_fast.reference.Network`), the baseline the tests and benchmarks hold the
        fast one against; the same state_dict keys."""
        if not fast:  # the one use of the oracle in this module
            return reference.Network(*self._network_args(), mixed_op=reference.MixedOp)
        net = Network(*self._network_args(), mixed_op=MixedOp)
        fuse_preprocessing(net)
        return net

    def _network_args(self) -> tuple:
        return (self.C, self.num_classes, self.layers, self.steps, self.multiplier, self.stem_multiplier,
                self.primitives, self.in_channels)

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["primitives"] = list(self.primitives)
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "SearchSpace":
        d = dict(d)
        d["primitives"] = tuple(d["primitives"])
        return cls(**d)


PRESETS: Dict[str, SearchSpace] = {
    "fmnist-paper": SearchSpace("fmnist-paper", tuple(FMNIST_PRIMITIVES), layers=3, steps=4, multiplier=4, C=16,
                                stem_multiplier=3, in_channels=1, input_size=28, num_classes=10),
    "darts-cifar": SearchSpace("darts-cifar", tuple(DARTS_PRIMITIVES), layers=8, steps=4, multiplier=4, C=16,
                               stem_multiplier=3, in_channels=3, input_size=32, num_classes=10),
}


def get_space(name: str, **overrides) -> SearchSpace:
    """A preset search space by name ('fmnist-paper', 'darts-cifar'), optionally modified."""
    if name not in PRESETS:
        raise ValueError(f"unknown search space {name!r}; presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


# ---------------------------------------------------------------------------- genotype
@dataclass
class Genotype:
    """A discrete architecture: per cell type, the chosen (op, input state) of each node's edges.

    ``normal[i]`` lists ``(primitive, src)`` pairs feeding node ``i + 2``;
    'none' edges are left out.
    """
    normal: List[List[Tuple[str, int]]]
    reduce: List[List[Tuple[str, int]]]
    normal_concat: List[int] = field(default_factory=list)
    reduce_concat: List[int] = field(default_factory=list)

    def op_counts(self, space: SearchSpace) -> Dict[str, int]:
        """Ops by type over the whole network (every cell of each type counted)."""
        n_red = sum(space.is_reduction(i) for i in range(space.layers))
        counts = {t: 0 for t in OP_TYPES}
        for nodes, times in ((self.normal, space.layers - n_red), (self.reduce, n_red)):
            for node in nodes:
                for prim, _ in node:
                    t = op_type(prim)
                    if t is not None:
                        counts[t] += times
        return counts

    def to_json(self) -> str:
        return json.dumps({"normal": self.normal, "reduce": self.reduce, "normal_concat": self.normal_concat,
                           "reduce_concat": self.reduce_concat})

    @classmethod
    def from_json(cls, s: str) -> "Genotype":
        d = json.loads(s)
        conv = lambda nodes: [[(str(p), int(j)) for p, j in node] for node in nodes]  # noqa: E731
        return cls(conv(d["normal"]), conv(d["reduce"]), list(d.get("normal_concat", [])),
                   list(d.get("reduce_concat", [])))


def genotype_weights(space: SearchSpace, genotype: Genotype) -> Tuple[Tensor, Tensor]:
    """One-hot ``[E, k]`` weights (normal, reduce) of a genotype; rows of dropped edges are zero."""
    pairs = space.edge_pairs()

    def one(nodes) -> Tensor:
        w = torch.zeros(space.num_edges, space.k)
        for i, node in enumerate(nodes):
            for prim, src in node:
                w[pairs.index((src, i + 2)), space.primitives.index(prim)] = 1.0
        return w

    return one(genotype.normal), one(genotype.reduce)


def derive_genotype(space: SearchSpace, weights_normal: Tensor, weights_reduce: Tensor,
                    top2: bool = False) -> Genotype:
    """Argmax per edge; with ``top2`` keep, as DARTS does, the two strongest incoming edges per node.

    Args:
        weights_normal, weights_reduce: ``[E, k]`` logits or probabilities.
    """
    none = space.primitives.index("none") if "none" in space.primitives else None

    def parse(w: Tensor) -> List[List[Tuple[str, int]]]:
        w = w.detach().float().cpu()
        if w.shape != (space.num_edges, space.k):
            raise ValueError(f"architecture weights must have shape [{space.num_edges}, {space.k}], "
                             f"got {list(w.shape)}")
        nodes, start = [], 0
        for i in range(space.steps):
            rows = w[start:start + 2 + i]
            best = []
            for j in range(rows.shape[0]):
                r = rows[j].clone()
                if none is not None:
                    r[none] = -float("inf")
                m = int(r.argmax())
                best.append((float(r[m]), j, m))
            if top2:
                best = sorted(best, key=lambda b: -b[0])[:2]
                best.sort(key=lambda b: b[1])
            elif none is not None:
                # plain argmax per edge: a 'none' edge is dropped
                best = [b for b in best if int(rows[b[1]].argmax()) != none]
            nodes.append([(space.primitives[m], j) for _, j, m in best])
            start += 2 + i
        return nodes

    concat = list(range(2 + space.steps - space.multiplier, space.steps + 2))
    return Genotype(parse(weights_normal), parse(weights_reduce), concat, list(concat))


# ------------------------------------------------------------------ discrete network
class _DiscreteCell(nn.Module):
    def __init__(self, nodes, concat, C_prev_prev, C_prev, C, reduction, reduction_prev, steps):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = SubsampledFactorizedReduce(C_prev_prev, C) if reduction_prev \
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self._nodes = [[(p, j) for p, j in node] for node in nodes]
        self._concat = concat
        self._steps = steps
        self._ops = nn.ModuleList()
        for node in nodes:
            for prim, j in node:
                self._ops.append(derived_op(prim, C, edge_stride(reduction, j)))
        self._C = C

    def forward(self, s0, s1):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for i, node in enumerate(self._nodes):
            acc = None
            for prim, j in node:
                o = self._ops[k](states[j])
                k += 1
                acc = o if acc is None else acc + o
            if acc is None:  # every edge into the node was 'none'
                h = states[1]
                if self.reduction:
                    h = h[:, :, ::2, ::2]
                acc = torch.zeros_like(h)
            states.append(acc)
        return torch.cat([states[i] for i in self._concat], dim=1)


class DiscreteNetwork(nn.Module):
    """The standalone network of a genotype: plain modules, no search machinery (DARTS eval ops, affine)."""

    def __init__(self, space: SearchSpace, genotype: Genotype):
        super().__init__()
        self.space = space
        C_curr = space.stem_multiplier * space.C
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, space.C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(space.layers):
            red = space.is_reduction(i)
            if red:
                C_curr *= 2
            nodes, concat = (genotype.reduce, genotype.reduce_concat) if red else (genotype.normal,
                                                                                   genotype.normal_concat)
            self.cells.append(_DiscreteCell(nodes, concat, C_prev_prev, C_prev, C_curr, red, reduction_prev,
                                            space.steps))
            reduction_prev = red
            C_prev_prev, C_prev = C_prev, len(concat) * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, space.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_genotype(space: SearchSpace, generator: Optional[torch.Generator] = None,
                    top2: bool = False, op_probs: Optional[Tensor] = None) -> Genotype:
    """A random architecture of the space (random logits, then :func:`derive_genotype`).

    Uniform by default. With ``op_probs`` (non-negative weights broadcastable to
    ``[2, E, k]``: the normal cell's edges, then the reduction cell's; ``[k]``
    for one mix everywhere), each edge takes primitive m with probability
    proportional to its weight (the argmax of ``U_m ** (1 / p_m)``, U uniform;
    its value, the edge's strength for ``top2``, stays random).
    """
    if op_probs is None:
        wn = torch.rand(space.num_edges, space.k, generator=generator)
        wr = torch.rand(space.num_edges, space.k, generator=generator)
        return derive_genotype(space, wn, wr, top2=top2)
    shape = (2, space.num_edges, space.k)
    p = torch.as_tensor(op_probs, dtype=torch.float64)
    try:
        p = p.expand(shape)
    except RuntimeError:
        raise ValueError(f"op_probs must broadcast to {list(shape)}, got shape {list(p.shape)}") from None
    if bool((p < 0).any()) or not bool((p.sum(-1) > 0).all()):
        raise ValueError("op_probs must be non-negative, with a positive weight on every edge")
    p = p / p.sum(-1, keepdim=True)
    # the exponential race: argmax_m U_m ** (1 / p_m) is m with probability p_m; p_m = 0 is never drawn
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    w = torch.where(p > 0, u.pow(1 / p.clamp_min(1e-12)), torch.zeros(()))
    return derive_genotype(space, w[0], w[1], top2=top2)


def mixed_random_genotype(space: SearchSpace, generator: Optional[torch.Generator] = None,
                          top2: bool = False) -> Genotype:
    """A random architecture with its own mix of primitives: one mix for the stride-1 edges and another
    for the stride-2 edges, then every edge's primitive from its mix (:func:`random_genotype`).

    A mix weighs primitive m by E_m ** 2, E_m exponential (Dirichlet(1) squared: one primitive often
    dominates), so these architectures spread from nearly all-cheapest to nearly all-dearest. Uniform
    architectures (a third of each primitive) lie in a narrow band of latency: on one 2-core CPU's
    table, 300 of them lay between 126 and 196 ms where a search's profiles lay at 79-119 ms.
    """
    stride2 = torch.tensor(space.row_strides()).view(2, space.num_edges, 1) == 2
    mix = torch.rand(2, space.k, generator=generator, dtype=torch.float64).log().square()
    return random_genotype(space, generator, top2=top2, op_probs=torch.where(stride2, mix[1], mix[0]))
