"""The search network: a stem, cells whose edges are mixed ops, and a classifier; the architecture weights
come from outside.

Its layout is quark0/darts's (reduction cells at a third and two thirds of the depth, each node fed by every
earlier state), and so are its modules' names: checkpoints load both ways between it and a quark0/darts
network, and between the fast network and the pure-PyTorch reference (:mod:`dartscc_fast.reference`).
:meth:`dartscc_fast.space.SearchSpace.supernet` builds it with the fast MixedOp.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dartscc_fast.nn.primitives import DARTS_PRIMITIVES, FactorizedReduce, ReLUConvBN, check_primitives

__all__ = ["Cell", "Network", "edge_pairs", "edge_stride", "is_reduction", "num_edges"]


# ------------------------------------------------------------------------------ the layout
def num_edges(steps: int) -> int:
    """Edges of one cell: node i has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


def edge_pairs(steps: int) -> List[Tuple[int, int]]:
    """(src, dst) of each edge of a cell, in the order of its mixed ops (and of the logits' rows)."""
    return [(src, dst) for dst in range(2, steps + 2) for src in range(dst)]


def edge_stride(reduction: bool, src: int) -> int:
    """The stride of an edge from state ``src``: 2 from a reduction cell's two inputs, else 1 (DARTS)."""
    return 2 if reduction and src < 2 else 1


def is_reduction(layers: int, cell: int) -> bool:
    """Whether cell ``cell`` of a ``layers``-cell network is a reduction cell (DARTS: at 1/3 and 2/3 of the depth)."""
    return cell in (layers // 3, 2 * layers // 3)


# ------------------------------------------------------------------------------- the modules
class Cell(nn.Module):
    """A search cell: its two inputs brought to ``C`` channels, then ``steps`` nodes, each the sum
    (:meth:`node_sum`) of one mixed op per earlier state; the output stacks the last ``multiplier`` nodes.

    ``mixed_op(C, stride, primitives)`` builds each edge. :func:`dartscc_fast.fuse_preprocessing` makes
    the cells of this class :class:`~dartscc_fast.nn.mixed_op.FastCell`, whose nodes sum in one pass.
    """

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str] = DARTS_PRIMITIVES, *, mixed_op):
        super().__init__()
        self.reduction = reduction
        # after a reduction cell, input 0 has twice the resolution of input 1
        self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev \
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList(mixed_op(C, edge_stride(reduction, src), primitives)
                                  for src, _ in edge_pairs(steps))

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor, hard: bool = False,
                edge_scale: Optional[Tensor] = None) -> Tensor:
        """``weights``: ``[E, k]``, or ``[N, E, k]`` per sample; ``edge_scale`` (``[E]`` or ``[N, E]``):
        each edge's output times it (a drop-path of the search's parameter-free candidates)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        per_sample = weights.dim() == 3
        incoming = []
        for e, ((src, dst), op) in enumerate(zip(edge_pairs(self._steps), self._ops)):
            o = op(states[src], weights[:, e] if per_sample else weights[e], hard=hard)
            if edge_scale is not None:
                o = _scaled(o, edge_scale[..., e])
            incoming.append(o)
            if len(incoming) == dst:  # node dst has every earlier state as an input
                states.append(self.node_sum(incoming))
                incoming = []
        return torch.cat(states[-self._multiplier:], dim=1)

    @staticmethod
    def node_sum(outputs: Sequence[Tensor]) -> Tensor:
        """A node: the sum of its incoming edges' outputs, in order."""
        return sum(outputs)


def _scaled(o: Tensor, s: Tensor) -> Tensor:
    """``o`` times ``s`` (a scalar, or one per sample); ``o`` itself where every scale is 1."""
    if bool((s == 1).all()):
        return o
    return o * (s.view(-1, 1, 1, 1) if s.dim() == 1 else s).to(o.dtype)


class Network(nn.Module):
    """The search network, ``layers`` cells deep, whose edges ``mixed_op(C, stride, primitives)`` builds.

    ``forward(x, weights_normal, weights_reduce, hard=False)`` with weights ``[E, k]`` (one
    architecture) or ``[N, E, k]`` (one per sample); ``hard=True`` for one-hot (GDAS) weights.
    """

    def __init__(self, C: int, num_classes: int, layers: int, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: Sequence[str] = DARTS_PRIMITIVES, in_channels: int = 3,
                 *, mixed_op):
        super().__init__()
        self.primitives = check_primitives(primitives)
        self._steps = steps
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self.cells = nn.ModuleList()
        inputs = (C_stem, C_stem)  # the channels of the two states the next cell reads
        for i in range(layers):
            C_cell = C * 2 ** sum(is_reduction(layers, j) for j in range(i + 1))  # doubled by each reduction
            reduction_prev = i > 0 and is_reduction(layers, i - 1)
            self.cells.append(Cell(steps, multiplier, *inputs, C_cell, is_reduction(layers, i), reduction_prev,
                                   self.primitives, mixed_op=mixed_op))
            inputs = (inputs[1], multiplier * C_cell)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(inputs[1], num_classes)

    @property
    def num_edges(self) -> int:
        """Edges per cell: the rows of each cell type's weights."""
        return num_edges(self._steps)

    def forward(self, x: Tensor, weights_normal: Tensor, weights_reduce: Tensor, hard: bool = False,
                edge_scale: Optional[Tensor] = None) -> Tensor:
        """``edge_scale`` (``[2E]`` or ``[N, 2E]``, normal rows then reduction rows): each edge's output
        times it, as :meth:`Cell.forward`."""
        states = (self.stem(x),) * 2  # the two states the next cell reads
        E = self.num_edges
        for cell in self.cells:
            w = weights_reduce if cell.reduction else weights_normal
            if edge_scale is None:  # passed only when given: other cell classes (the oracle's, a user's) lack it
                states = (states[1], cell(*states, w, hard=hard))
            else:
                rows = edge_scale[..., E:] if cell.reduction else edge_scale[..., :E]
                states = (states[1], cell(*states, w, hard=hard, edge_scale=rows))
        return self.classifier(self.global_pooling(states[1]).flatten(1))
