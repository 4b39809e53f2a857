"""Pure-PyTorch references: the oracle of the tests and the baseline of the benchmarks.

Everything here is eager PyTorch written for clarity, with quark0/darts
semantics: what a user would run without this package. It imports no other
module of the package (``tests/test_layering.py`` checks), so a change to the
production code cannot change what it is checked against: the candidates,
MixedOp, cell and network below are the oracle's own, with quark0/darts's
module names and state_dict keys.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


# ------------------------------------------------------------------------ the candidates
#: The DARTS search space, in quark0/darts order.
DARTS_PRIMITIVES: List[str] = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                               "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
_CONVS = {"sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5"}
_KNOWN = frozenset(DARTS_PRIMITIVES) | _CONVS | {"conv_7x1_1x7"}


def check_primitives(primitives: Sequence[str]) -> List[str]:
    """The names as a list; ValueError for none, an unknown one or a repeated one."""
    primitives = list(primitives)
    unknown = [p for p in primitives if p not in _KNOWN]
    if unknown or not primitives or len(set(primitives)) != len(primitives):
        what = f"unknown primitive {unknown[0]!r}" if unknown else "primitives must be distinct and at least one"
        raise ValueError(f"{what}, got {primitives}; known primitives: {sorted(_KNOWN)}")
    return primitives


class _Layers(nn.Module):
    """quark0/darts's ReLUConvBN, SepConv and DilConv: their layers, in order, in an ``op`` nn.Sequential."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def _relu_dw_pw_bn(C_in: int, C_out: int, k: int, stride: int, padding: int, dilation: int, affine: bool):
    """ReLU, depthwise k x k convolution, pointwise convolution, BatchNorm: a DilConv, and each half of a SepConv."""
    return [nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, stride, padding, dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine)]


class ReLUConvBN(_Layers):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__([nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, kernel_size, stride, padding, bias=False),
                          nn.BatchNorm2d(C_out, affine=affine)])


class DilConv(_Layers):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__(_relu_dw_pw_bn(C_in, C_out, kernel_size, stride, padding, dilation, affine))


class SepConv(_Layers):
    """Two DilConv-like halves at dilation 1; the first has the stride and keeps the channels."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__(_relu_dw_pw_bn(C_in, C_in, kernel_size, stride, padding, 1, affine)
                         + _relu_dw_pw_bn(C_in, C_out, kernel_size, 1, padding, 1, affine))


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Zero(nn.Module):
    """'none': zeros of the (strided) output's shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    """skip_connect at stride 2: two 1x1 stride-2 convolutions, on the even pixel grid and on the grid one
    pixel down and right, stacked on channels, then BatchNorm. H and W must be even."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1, self.conv_2 = (nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False) for _ in range(2))
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"FactorizedReduce (skip_connect at stride 2) needs even H and W, got "
                             f"{tuple(x.shape[2:])}")
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def search_candidate(primitive: str, C: int, stride: int) -> nn.Module:
    """quark0/darts's ``OPS[primitive](C, stride, affine=False)``, a pool followed by BatchNorm as its MixedOp does."""
    check_primitives([primitive])
    if primitive == "none":
        return Zero(stride)
    if primitive == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1), nn.BatchNorm2d(C, affine=False))
    if primitive == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
                             nn.BatchNorm2d(C, affine=False))
    if primitive == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(C, C, affine=False)
    if primitive in _CONVS:  # sep_conv_KxK, padding K // 2; dil_conv_KxK, dilation 2, padding K - 1
        k = int(primitive[-1])
        if primitive.startswith("sep"):
            return SepConv(C, C, k, stride, k // 2, affine=False)
        return DilConv(C, C, k, stride, k - 1, 2, affine=False)
    return nn.Sequential(nn.ReLU(inplace=False),  # conv_7x1_1x7
                         nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
                         nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
                         nn.BatchNorm2d(C, affine=False))


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
