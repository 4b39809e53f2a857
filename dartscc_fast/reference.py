"""Pure-PyTorch references: the oracle of the tests and the baseline of the benchmarks.

Everything here is eager PyTorch written for clarity, with quark0/darts
semantics: what a user would run without this package.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dartscc_fast.primitives import DARTS_PRIMITIVES, FactorizedReduce, ReLUConvBN, check_primitives, \
    search_candidate


# ----------------------------------------------------------------------------- the ops
def _per_sample(w: Tensor, m: int, like: Tensor) -> Tensor:
    """Weight m, broadcastable against `like` ([N, ...]) for [N, k] weights."""
    if w.dim() == 1:
        return w[m]
    return w[:, m].reshape((-1,) + (1,) * (like.dim() - 1))


def mixed_sum(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """quark0/darts: ``sum(w * op(x) for w, op in zip(weights, ops))``."""
    return sum(_per_sample(weights, m, o) * o for m, o in enumerate(outputs))


def philox_gumbel(seed: int, n: int) -> np.ndarray:
    """Gumbel noise of elements 0..n-1 for `seed`: the NumPy twin of csrc/common/philox.h."""
    idx = np.arange(n, dtype=np.uint64)
    ctr = idx >> np.uint64(2)
    c0 = ctr & np.uint64(0xFFFFFFFF)
    c1 = ctr >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    seed &= (1 << 64) - 1
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    mask = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & mask
        hi1, lo1 = p1 >> np.uint64(32), p1 & mask
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    lanes = np.stack([c0, c1, c2, c3], axis=-1)
    bits = lanes[np.arange(n), (idx & np.uint64(3)).astype(np.int64)]
    u = (bits.astype(np.float64) + 0.5) / 4294967296.0
    return -np.log(-np.log(u))


def gumbel_softmax(logits: Tensor, tau: float, hard: bool, seed: int) -> Tensor:
    """``torch.nn.functional.gumbel_softmax`` with the package's Philox noise for `seed`."""
    g = torch.from_numpy(philox_gumbel(seed, logits.numel())).reshape(logits.shape)
    y = F.softmax((logits + g.to(logits)) / tau, dim=-1)
    if not hard:
        return y
    index = y.argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y).scatter_(-1, index, 1.0)
    return y_hard - y.detach() + y


def hard_mixed_sum(outputs: Sequence[Tensor], weights: Tensor, index: Tensor) -> Tensor:
    """GDAS: the drawn op's weighted output, plus the (zero-valued) weights of the rest."""
    k = len(outputs)
    n = index.shape[0]
    w = weights if weights.dim() == 2 else weights.expand(n, k)
    rows = []
    seen = [0] * k
    for i in range(n):
        m = int(index[i])
        o = outputs[m][seen[m]]
        seen[m] += 1
        rest = sum(w[i, j] for j in range(k) if j != m)
        rows.append(w[i, m] * o + rest)
    return torch.stack(rows) if rows else outputs[0].new_empty((0,) + tuple(outputs[0].shape[1:]))


def pool_bn(x: Tensor, kind: str, stride: int, eps: float = 1e-5,
            stats: Optional[Tensor] = None) -> Tensor:
    """3x3 pooling (DARTS padding) followed by BatchNorm2d(affine=False)."""
    if kind == "max_pool":
        p = F.max_pool2d(x, 3, stride, 1)
    else:
        p = F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
    if stats is None:
        return F.batch_norm(p, None, None, training=True, eps=eps)
    return F.batch_norm(p, stats[0].to(p), stats[1].to(p), training=False, eps=eps)


def relu_dw_pw_conv(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int = 1,
                    dilation: int = 1) -> Tensor:
    """The reference of :func:`dartscc_fast.ops.relu_dw_pw_conv`: ReLU, depthwise, pointwise (quark0/darts)."""
    k = dw_weight.shape[-1]
    t = F.conv2d(F.relu(x), dw_weight, None, stride, dilation * (k - 1) // 2, dilation, groups=x.shape[1])
    return F.conv2d(t, pw_weight)


def batch_norm_train(x: Tensor, eps: float = 1e-5):
    """Affine-free training-mode BatchNorm: ``(y, batch mean, biased batch var)`` of each channel."""
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)
    return F.batch_norm(x, None, None, training=True, eps=eps), mean, var


def node_sum(xs: Sequence[Tensor]) -> Tensor:
    """The reference of :func:`dartscc_fast.ops.node_sum`: pairwise additions in order, a new tensor."""
    xs = list(xs)
    out = xs[0].clone(memory_format=torch.contiguous_format)
    for x in xs[1:]:
        out = out + x
    return out


def mixed_op_free(x: Tensor, param_outputs: Sequence[Tensor], weights: Tensor, prims: Sequence[str],
                  stride: int = 1, eps: float = 1e-5, bn_stats: Optional[Tensor] = None) -> Tensor:
    """The reference of :func:`dartscc_fast.ops.mixed_op_free` (its first output)."""
    outs, params, pool = [], iter(param_outputs), 0
    for p in prims:
        if p == "param":
            outs.append(next(params))
        elif p == "none":
            outs.append(x[:, :, ::stride, ::stride] * 0)
        elif p == "identity":
            outs.append(x)
        else:
            outs.append(pool_bn(x, p, stride, eps, None if bn_stats is None else bn_stats[pool]))
            pool += 1
    return mixed_sum(outs, weights)


# --------------------------------------------------------------------------- MixedOp
class MixedOp(nn.Module):
    """quark0/darts ``MixedOp``, with per-sample weights and the hard (GDAS) path.

    ``forward(x, weights)``: weights ``[k]`` or ``[N, k]``. With ``hard=True``
    the weights are one-hot (straight-through) and only the drawn op runs, on
    the samples that drew it.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = DARTS_PRIMITIVES):
        super().__init__()
        self.primitives = check_primitives(primitives)
        self.C, self.stride = C, stride
        self._ops = nn.ModuleList(search_candidate(p, C, stride) for p in self.primitives)

    def forward(self, x: Tensor, weights: Tensor, hard: bool = False) -> Tensor:
        if not hard:
            return mixed_sum([op(x) for op in self._ops], weights)
        k = len(self._ops)
        index = weights.argmax(-1)
        if weights.dim() == 1:
            m = int(index)
            return weights[m] * self._ops[m](x) + (weights.sum() - weights[m])
        out = None
        for m in range(k):
            rows = (index == m).nonzero().flatten()
            if rows.numel() == 0:
                continue
            o = self._ops[m](x[rows])
            if out is None:
                out = x.new_zeros((x.shape[0],) + tuple(o.shape[1:]))
            out = out.index_copy(0, rows, o)
        w_drawn = weights.gather(1, index[:, None]).squeeze(1)
        rest = weights.sum(1) - w_drawn
        shape = (-1,) + (1,) * (out.dim() - 1)
        return w_drawn.reshape(shape) * out + rest.reshape(shape)


# --------------------------------------------------------------------------- network
class Cell(nn.Module):
    """quark0/darts search cell; `mixed_op` builds each edge's mixed op."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 primitives=DARTS_PRIMITIVES, mixed_op=MixedOp):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride, primitives))

    def forward(self, s0, s1, weights, hard=False):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        per_sample = weights.dim() == 3
        for _ in range(self._steps):
            s = self.node_sum([self._ops[offset + j](h, weights[:, offset + j] if per_sample else weights[offset + j],
                                                     hard=hard)
                               for j, h in enumerate(states)])
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)

    @staticmethod
    def node_sum(outputs):
        """A node: the sum of its incoming edges' outputs (Python's sum, as quark0/darts)."""
        return sum(outputs)


def num_edges(steps: int) -> int:
    """Edges of one cell: node i has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


class Network(nn.Module):
    """quark0/darts search network whose architecture weights come from outside.

    ``forward(x, weights_normal, weights_reduce, hard=False)`` with weights
    ``[E, k]`` (one architecture) or ``[N, E, k]`` (one per sample).
    """

    def __init__(self, C: int, num_classes: int, layers: int, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: Sequence[str] = DARTS_PRIMITIVES,
                 in_channels: int = 3, mixed_op=MixedOp):
        super().__init__()
        self.primitives = check_primitives(primitives)
        self._steps = steps
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   self.primitives, mixed_op))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    @property
    def num_edges(self) -> int:
        return num_edges(self._steps)

    def forward(self, x: Tensor, weights_normal: Tensor, weights_reduce: Tensor, hard: bool = False) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w = weights_reduce if cell.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, w, hard=hard)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))


# ------------------------------------------------------------------- latency (issue 3)
def latency_lookup(table, keys: Sequence[str], k: int) -> Tensor:
    """A Python dict lookup of E * k configuration keys into ``L [E, k]`` (float64); '' costs 0."""
    values = [0.0 if key == "" else float(table[key]) for key in keys]
    return torch.tensor(values, dtype=torch.float64).reshape(-1, k)


def latency_reg(w: Tensor, L: Tensor, S: Tensor, type_index: Sequence[int]) -> Tensor:
    """``sum_e sum_m S[type(m)] * L[e, m] * w[e, m]``; ``[N]`` when w ([N, E, k]) or S ([N, T]) is per sample.

    type_index[m] = -1 marks a candidate with no type and no cost ('none').
    """
    idx = torch.as_tensor(list(type_index), dtype=torch.long, device=S.device)
    S_pad = torch.cat([S, S.new_zeros(S.shape[:-1] + (1,))], dim=-1)  # index -1 -> the appended 0
    St = S_pad[..., idx]  # [k] or [N, k]
    if St.dim() == 2:
        St = St.unsqueeze(1)  # [N, 1, k]
    return (w * L * St).sum(dim=(-2, -1))
