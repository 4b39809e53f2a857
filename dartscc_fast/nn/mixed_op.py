"""The drop-in fast ``MixedOp`` and ``replace_mixed_ops``.

Same modules, submodule names and state_dict keys as quark0/darts; only the
forward differs. Parameter-free candidates (zero, identity, pooling + BatchNorm)
are computed inside the fused weighted sum (:func:`dartscc_fast.ops.mixed_op_free`);
the convolutions (DARTS's SepConv and DilConv) run on the CPU as fused
ReLU-depthwise-pointwise units (:func:`dartscc_fast.ops.relu_dw_pw_conv`) with
their own BatchNorm modules; other candidates run as modules. With hard weights only the
drawn candidate runs (:func:`dartscc_fast.ops.hard_mixed_sum`), a drawn pool
through the same fused kernel.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dartscc_fast import ops
from dartscc_fast.nn.batch_norm import batch_norm, update_running_stats, use_fast_batch_norm
from dartscc_fast.nn.conv1x1 import use_conv1x1
from dartscc_fast.nn.primitives import (
    DARTS_PRIMITIVES,
    FactorizedReduce,
    Identity,
    ReduceGroup,
    SubsampledFactorizedReduce,
    Zero,
    _scope_cache,
    _scoped,
    check_primitives,
    close_grid_scope,
    factorized_reduce_grouped,
    factorized_reduce_subsampled,
    open_grid_scope,
    search_candidate,
)
from dartscc_fast.nn.supernet import Cell
from dartscc_fast.nn.tuning import TUNING

__all__ = ["MixedOp", "FastCell", "replace_mixed_ops", "fuse_preprocessing"]


# One fused unit of a convolution candidate: (depthwise conv, pointwise conv, BatchNorm, stride, dilation).
Unit = Tuple[nn.Conv2d, nn.Conv2d, nn.Module, int, int]


def _conv_units(op: nn.Module) -> Optional[List[Unit]]:
    """The ReLU-depthwise-pointwise-BatchNorm units of a DARTS SepConv or DilConv, or None.

    Any module whose ``op`` (or itself) is an ``nn.Sequential`` of one or more
    (ReLU, depthwise Conv2d with "same" padding, 1x1 Conv2d, BatchNorm2d)
    groups, neither convolution with a bias, qualifies.
    """
    seq = getattr(op, "op", op)
    if not isinstance(seq, nn.Sequential) or len(seq) == 0 or len(seq) % 4:
        return None
    units: List[Unit] = []
    for i in range(0, len(seq), 4):
        relu, dw, pw, bn = seq[i:i + 4]
        if type(relu) is not nn.ReLU or type(dw) is not nn.Conv2d or not _is_pointwise(pw, 1) \
                or not isinstance(bn, nn.BatchNorm2d):
            return None
        k, d, s, p = dw.kernel_size, dw.dilation, dw.stride, dw.padding
        if not (k[0] == k[1] and k[0] % 2 == 1 and k[0] <= 7 and d[0] == d[1] and s[0] == s[1] and s[0] in (1, 2)
                and p == (d[0] * (k[0] - 1) // 2,) * 2 and dw.groups == dw.in_channels == dw.out_channels
                and dw.bias is None and dw.padding_mode == "zeros" and pw.in_channels == dw.out_channels):
            return None
        units.append((dw, pw, bn, s[0], d[0]))
    return units


def _is_pointwise(conv: nn.Module, stride: int) -> bool:
    return type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (stride, stride) \
        and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None


def _reduce_parts(op: nn.Module) -> Optional[Tuple[nn.Conv2d, nn.Conv2d, nn.Module]]:
    """(conv_1, conv_2, bn) of a DARTS FactorizedReduce (skip_connect at stride 2), or None."""
    if not type(op).__name__.endswith("FactorizedReduce"):
        return None
    relu, c1, c2, bn = (getattr(op, a, None) for a in ("relu", "conv_1", "conv_2", "bn"))
    if type(relu) is not nn.ReLU or not (_is_pointwise(c1, 2) and _is_pointwise(c2, 2)) \
            or not isinstance(bn, nn.BatchNorm2d) or c1.in_channels != c2.in_channels:
        return None
    return c1, c2, bn


_POOLS = ("max_pool", "avg_pool")


def _pools_shareable(x: Tensor) -> bool:
    """TUNING.share_pools is on and a grid scope is open to share x's pools in (inference tensors are never cached)."""
    return TUNING.share_pools and not x.is_inference() and _scope_cache() is not None


def _fusable(x: Tensor) -> bool:
    """The compiled relu_dw_pw_conv kernel exists for CPU float32/float64."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _unit_is_fused(x: Tensor, k: int, stride: int, dilation: int) -> bool:
    """Whether a unit (kernel k, stride, dilation) on input x runs fused (see TUNING.fused_conv_min_pixels)."""
    if not _fusable(x):
        return False
    if k * dilation > 3:
        return True
    return ((x.shape[2] - 1) // stride + 1) * ((x.shape[3] - 1) // stride + 1) >= TUNING.fused_conv_min_pixels


def _run_units(x: Tensor, units: List[Unit]) -> Tensor:
    """SepConv / DilConv unit by unit: fused ReLU-depthwise-pointwise, or torch's, then the unit's BatchNorm module."""
    for dw, pw, bn, stride, dilation in units:
        if _unit_is_fused(x, dw.kernel_size[0], stride, dilation):
            x = batch_norm(bn, ops.relu_dw_pw_conv(x, dw.weight, pw.weight, stride, dilation))
        else:
            x = batch_norm(bn, pw(dw(torch.relu(x))))
    return x


def _run_reduce(x: Tensor, parts: Tuple[nn.Conv2d, nn.Conv2d, nn.Module],
                group: Optional[Tuple[ReduceGroup, int]] = None) -> Tensor:
    """FactorizedReduce on the two pixel grids it reads (:func:`factorized_reduce_subsampled`), as
    member ``group[1]`` of a :class:`~dartscc_fast.nn.primitives.ReduceGroup` when given."""
    FactorizedReduce.check_input(x)
    conv_1, conv_2, bn = parts
    if group is not None:
        return factorized_reduce_grouped(x, group[0], group[1], bn)
    return factorized_reduce_subsampled(x, conv_1.weight, conv_2.weight, bn)


def _slot(op: nn.Module) -> Tuple[str, Optional[nn.BatchNorm2d], Optional[int]]:
    """How the fused kernel can run a candidate: (slot kind, its BatchNorm, its stride)."""
    if isinstance(op, Zero) or type(op).__name__ == "Zero":
        return "none", None, getattr(op, "stride", None)
    if isinstance(op, (Identity, nn.Identity)) or type(op).__name__ == "Identity":
        return "identity", None, 1
    if isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[1], nn.BatchNorm2d) \
            and not op[1].affine:
        pool = op[0]
        ks, st, pad = (getattr(pool, a, None) for a in ("kernel_size", "stride", "padding"))
        norm = lambda v: v if isinstance(v, int) else (v[0] if v is not None and len(set(v)) == 1 else -1)  # noqa: E731
        if isinstance(pool, nn.MaxPool2d) and norm(ks) == 3 and norm(pad) == 1 and pool.dilation == 1 \
                and not pool.ceil_mode:
            return "max_pool", op[1], norm(st)
        if isinstance(pool, nn.AvgPool2d) and norm(ks) == 3 and norm(pad) == 1 and not pool.ceil_mode \
                and not pool.count_include_pad and pool.divisor_override is None:
            return "avg_pool", op[1], norm(st)
    return "param", None, None


class MixedOp(nn.Module):
    """Drop-in replacement of quark0/darts ``MixedOp(C, stride)``.

    Args:
        C: channels.
        stride: 1, or 2 on the reduction cells' input edges.
        primitives: candidate names (default: the 8 DARTS primitives).

    ``forward(x, weights, hard=False)``: ``weights`` is ``[k]`` or, per sample,
    ``[N, k]``. With ``hard=True`` the weights must be one-hot (straight-through
    Gumbel) and only the drawn op runs.

    On the CPU (float32/float64), SepConv and DilConv candidates run as fused
    :func:`dartscc_fast.ops.relu_dw_pw_conv` units followed by their own
    BatchNorm modules, where that is the faster (``TUNING.fused_conv_min_pixels`` in
    this module); ``repr`` lists them (``fused_convs_on_cpu``). A
    FactorizedReduce (skip_connect at stride 2) runs on the two pixel grids it
    reads, on every device (``subsampled``; see
    :func:`~dartscc_fast.nn.primitives.factorized_reduce_subsampled`).

    ``channels_last_params = True`` (off by default) runs the remaining
    parametric candidates (modules the fused units do not cover) on a
    channels_last copy of ``x`` on CPU, where oneDNN's convolutions are faster;
    torch 2.13's oneDNN crashed (SIGSEGV in the channels_last 1x1-convolution
    weight gradient) in our small-batch search tests, so it stays opt-in.
    Dilated convolutions at stride 2 keep NCHW, and so does the hard path.
    """

    channels_last_params: bool = False

    def __init__(self, C: int, stride: int, primitives: Sequence[str] = DARTS_PRIMITIVES):
        super().__init__()
        primitives = check_primitives(primitives)
        if stride not in (1, 2):
            raise ValueError(f"MixedOp: stride must be 1 or 2, got {stride}")
        ops_ = nn.ModuleList(search_candidate(p, C, stride) for p in primitives)
        self._init_from(ops_, stride, primitives)

    @classmethod
    def from_ops(cls, ops_: nn.ModuleList, stride: Optional[int] = None,
                 primitives: Optional[Sequence[str]] = None) -> "MixedOp":
        """Wrap existing candidate modules (they are shared, not copied)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init_from(ops_, stride, primitives)
        return self

    def _init_from(self, ops_: nn.ModuleList, stride: Optional[int], primitives) -> None:
        self._ops = ops_
        slots = [_slot(op) for op in ops_]
        strides = {s for _, _, s in slots if s is not None}
        if stride is None:
            stride = strides.pop() if len(strides) == 1 else _conv_stride(ops_)
        if len(ops_) > ops.MAX_OPS:
            raise ValueError(f"MixedOp: at most {ops.MAX_OPS} candidates, got {len(ops_)}")
        # A candidate whose own stride disagrees runs as a module, not fused.
        self._kinds: List[str] = [k if (s is None or s == stride) and not (k == "identity" and stride != 1)
                                  else "param" for k, _, s in slots]
        self._bns = [bn for (k, bn, _), kind in zip(slots, self._kinds) if kind in _POOLS]
        self._codes = ops.prim_codes(self._kinds)
        # the codes when the pools come in shared (TUNING.share_pools): each pool slot is then an input, like a param
        self._codes_shared = ops.prim_codes(["param" if k in _POOLS else k for k in self._kinds])
        self.stride = stride
        # How each parametric candidate runs: fused conv units (CPU), a subsampled FactorizedReduce, or as its module.
        self._units = [_conv_units(op) if kind == "param" else None for op, kind in zip(ops_, self._kinds)]
        self._reduce = [_reduce_parts(op) if kind == "param" else None for op, kind in zip(ops_, self._kinds)]
        # (group, member) of a FactorizedReduce that runs with those of its cell's other edges on the same state
        self._reduce_group: List[Optional[Tuple[ReduceGroup, int]]] = [None] * len(ops_)
        self._cl = [kind == "param" and units is None and red is None
                    and not (stride == 2 and type(op).__name__ == "DilConv")
                    for op, kind, units, red in zip(ops_, self._kinds, self._units, self._reduce)]
        self.primitives = list(primitives) if primitives is not None else [type(o).__name__ for o in ops_]
        eps = {bn.eps for bn in self._bns}
        if len(eps) > 1:
            self._kinds = ["param" if k in _POOLS else k for k in self._kinds]
            self._codes, self._bns = ops.prim_codes(self._kinds), []
            self._codes_shared = self._codes
        self._eps = eps.pop() if len(eps) == 1 else 1e-5

    def extra_repr(self) -> str:
        free = [p for p, k in zip(self.primitives, self._kinds) if k != "param"]
        convs = [p for p, u in zip(self.primitives, self._units) if u is not None]
        reduce = [p for p, r in zip(self.primitives, self._reduce) if r is not None]
        return f"stride={self.stride}, fused={free}, fused_convs_on_cpu={convs}, subsampled={reduce}"

    def forward(self, x: Tensor, weights: Tensor, hard: bool = False) -> Tensor:
        if weights.dim() not in (1, 2) or weights.shape[-1] != len(self._ops):
            raise ValueError(f"MixedOp: weights must have shape [k] or [N, k] with k={len(self._ops)}, "
                             f"got {list(weights.shape)}")
        if hard:
            return self._forward_hard(x, weights)
        fused = _fusable(x)
        xp = self._param_input(x) if any(self._cl) else x
        share = self._shares_pools(x)
        params = [self._run_param(m, x, xp if cl else x, fused, grouped=True) if kind == "param"
                  else self._shared_pool(m, x)
                  for m, (kind, cl) in enumerate(zip(self._kinds, self._cl))
                  if kind == "param" or (share and kind in _POOLS)]
        if len(params) == len(self._kinds):
            return ops.mixed_sum(params, weights)
        if share:
            return ops.mixed_op_free(x, params, weights, self._codes_shared, self.stride, self._eps)[0]
        bn_stats = self._running_stats() if self._bns and not self._bn_uses_batch_stats() else None
        y, stats = ops.mixed_op_free(x, params, weights, self._codes, self.stride, self._eps, bn_stats)
        if self._bns and bn_stats is None:
            self._update_running_stats(stats, x)
        return y

    def _run_param(self, m: int, x: Tensor, xp: Tensor, fused: bool, grouped: bool = False) -> Tensor:
        """Parametric candidate m: as ReLU-depthwise-pointwise units where it is made of them, a FactorizedReduce
        on its two pixel grids (with its group when ``grouped``: every edge of the group runs it), else the module."""
        if fused and self._units[m] is not None:
            return _run_units(x, self._units[m])
        if self._reduce[m] is not None:
            return _run_reduce(x, self._reduce[m], self._reduce_group[m] if grouped else None)
        return self._ops[m](xp)

    def _shares_pools(self, x: Tensor) -> bool:
        """Whether this forward takes its pools from the open grid scope (see TUNING.share_pools)."""
        return bool(self._bns) and self._bn_uses_batch_stats() and _pools_shareable(x)

    def _shared_pool(self, m: int, x: Tensor) -> Tensor:
        """Pool candidate m's output, BatchNorm'd on batch statistics, computed once per (x, pool, stride)
        in the open grid scope; this candidate's BatchNorm gets the running-statistics update all the same."""
        kind, bn = self._kinds[m], self._ops[m][1]
        y, stats = _scoped(x, ("pool", kind, self.stride, bn.eps),
                           lambda: ops.mixed_op_free(x, [], x.new_ones(1), [kind], self.stride, bn.eps))
        _update_bn(bn, stats[0], x, self.stride)
        return y

    def _param_input(self, x: Tensor) -> Tensor:
        """The input the parametric candidates get (channels_last on CPU)."""
        if self.channels_last_params and x.device.type == "cpu" and x.dim() == 4 \
                and not x.is_contiguous(memory_format=torch.channels_last):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- BatchNorm bookkeeping of the fused pools ----------------------------------
    def _bn_uses_batch_stats(self) -> bool:
        bn = self._bns[0]
        return bn.training or not bn.track_running_stats or bn.running_mean is None

    def _running_stats(self) -> Tensor:
        return torch.stack([torch.stack([bn.running_mean, bn.running_var]) for bn in self._bns])

    def _update_running_stats(self, stats: Tensor, x: Tensor) -> None:
        for bn, mean_var in zip(self._bns, stats):
            _update_bn(bn, mean_var, x, self.stride)

    # -- hard path -------------------------------------------------------------------
    def _run_candidate(self, m: int, x: Tensor, share: bool = False) -> Tensor:
        """Candidate m on x: a fused pool + BatchNorm runs through the kernel, never torch's pooling; with
        ``share``, a pool computed once per (x, pool, stride) in the open grid scope (see TUNING.share_pools)."""
        kind = self._kinds[m]
        if kind == "param" and x.shape[0]:
            return self._run_param(m, x, x, _fusable(x))
        if kind not in _POOLS or x.shape[0] == 0:
            return self._ops[m](x)
        bn = self._ops[m][1]
        batch_stats = bn.training or not bn.track_running_stats or bn.running_mean is None
        if share and batch_stats and _pools_shareable(x):
            return self._shared_pool(m, x)
        bn_stats = None if batch_stats else torch.stack([bn.running_mean, bn.running_var])[None]
        y, stats = ops.mixed_op_free(x, [], x.new_ones(1), [kind], self.stride, bn.eps, bn_stats)
        if batch_stats:
            _update_bn(bn, stats[0], x, self.stride)
        return y

    def _forward_hard(self, x: Tensor, weights: Tensor) -> Tensor:
        k = len(self._ops)
        if weights.dim() == 1:
            m = _exact_one_hot(weights) if weights.dtype == x.dtype and weights.device == x.device else None
            if m is not None:
                # under autograd the edge returns a view of a shared pool (_DrawnOutput), which autograd
                # keeps from being changed in place; without, edges would return the very same tensor
                recorded = torch.is_grad_enabled() and (x.requires_grad or weights.requires_grad)
                o = self._run_candidate(m, x, share=recorded)
                if torch.is_grad_enabled() and (o.requires_grad or weights.requires_grad):
                    # autograd refuses in-place changes to the returned view
                    return _DrawnOutput.apply(o, weights, m)
                # without autograd, a drawn identity must not hand back the caller's own tensor
                return o.clone() if o.data_ptr() == x.data_ptr() and o.numel() else o
            m = int(weights.argmax())
            o = self._run_candidate(m, x)
            outputs = [o if j == m else o.new_empty((0,) + tuple(o.shape[1:])) for j in range(k)]
            index = torch.full((x.shape[0],), m, dtype=torch.long, device=x.device)
            return ops.hard_mixed_sum(outputs, weights, index)
        index = weights.argmax(-1)
        groups = ops.hard_groups(index, k)
        outputs: List[Optional[Tensor]] = []
        for m, g in enumerate(groups):
            # NCHW here: oneDNN's channels_last 1x1-conv weight gradient crashed
            # (SIGSEGV) on such per-sample subsets in our search tests.
            outputs.append(self._run_candidate(m, x.index_select(0, g)) if g.numel() else None)
        ref = next(o for o in outputs if o is not None) if x.shape[0] else self._ops[0](x)
        outputs = [o if o is not None else ref.new_empty((0,) + tuple(ref.shape[1:])) for o in outputs]
        return ops.hard_mixed_sum(outputs, weights, index)


def _exact_one_hot(weights: Tensor) -> Optional[int]:
    """The index of the 1 when ``weights`` (one edge's) is exactly one-hot in value, else None."""
    values = weights.tolist()
    if values.count(1.0) == 1 and values.count(0.0) == len(values) - 1:
        return values.index(1.0)
    return None


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> over all elements, through BLAS when both share a dense layout (no product tensor)."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) \
            and b.is_contiguous(memory_format=torch.channels_last):
        return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return (a * b).sum()


class _DrawnOutput(torch.autograd.Function):
    """The per-edge hard sum for exactly one-hot weights (the package's hard
    Gumbel-Softmax gives them): ``weights[m] * o + sum of the zero weights`` is
    ``o`` itself, so the forward returns it without a pass over memory, and the
    backward passes the gradient through and gives the weights
    :func:`dartscc_fast.ops.hard_mixed_sum`'s straight-through gradient,
    ``<g, o>`` for the drawn op and ``sum(g)`` for the others, from two reductions.
    """

    @staticmethod
    def forward(ctx, o: Tensor, weights: Tensor, m: int) -> Tensor:
        ctx.save_for_backward(o)
        ctx.m, ctx.k = m, weights.shape[0]
        return o.view_as(o)

    @staticmethod
    def backward(ctx, g: Tensor):
        o, = ctx.saved_tensors
        gw = None
        if ctx.needs_input_grad[1]:
            gw = g.sum().expand(ctx.k).clone()
            gw[ctx.m] = _flat_dot(g, o)
        return g, gw, None


def _open_grid_scope(module, args) -> None:
    open_grid_scope()


def _close_grid_scope(module, args, output) -> None:
    close_grid_scope()


def _update_bn(bn: nn.BatchNorm2d, mean_var: Tensor, x: Tensor, stride: int) -> None:
    """Update bn's running statistics as nn.BatchNorm2d does, from the batch (mean, biased var) of a fused pool."""
    mean, var = mean_var
    ho, wo = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    update_running_stats(bn, mean, var, x.shape[0] * ho * wo)


def _conv_stride(ops_: nn.ModuleList) -> int:
    for op in ops_:
        if type(op).__name__ == "FactorizedReduce":
            return 2
        for mod in op.modules():
            if isinstance(mod, nn.Conv2d):
                return int(mod.stride[0])
    return 1


def replace_mixed_ops(model: nn.Module) -> int:
    """Swap every DARTS-style MixedOp in `model` for the fast one, in place.

    A DARTS-style MixedOp is any module whose class is named ``MixedOp`` and
    which holds its candidates in ``_ops`` (an ``nn.ModuleList``), as in
    quark0/darts. The candidates, their weights and their state_dict keys are
    kept; candidates the fused kernel does not know run as modules.

    Returns:
        The number of modules replaced.
    """
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod).__name__ == "MixedOp" and not isinstance(mod, MixedOp)
               and isinstance(getattr(mod, "_ops", None), nn.ModuleList)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = MixedOp.from_ops(mod._ops, primitives=getattr(mod, "primitives", None))
        new.train(mod.training)
        if not name:
            raise ValueError("replace_mixed_ops: the model itself is a MixedOp; use MixedOp.from_ops(model._ops)")
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            parent[int(child)] = new
        else:
            setattr(parent, child, new)
    return len(targets)


class FastCell(Cell):
    """The search cell with each node's sum in one pass (:func:`dartscc_fast.ops.node_sum`): the same
    values, parameters and state_dict keys. :func:`fuse_preprocessing` makes the package's cells
    (:class:`dartscc_fast.nn.Cell`) FastCells; other cell classes keep their own forward."""

    node_sum = staticmethod(ops.node_sum)


def _group_reduces(cell: nn.Module) -> None:
    """Make the FactorizedReduce candidates of each input state's edges one ReduceGroup (see
    fuse_preprocessing). Cells whose edge count does not match DARTS's layout are left alone."""
    steps, ops_ = getattr(cell, "_steps", None), cell._ops
    if not isinstance(steps, int) or len(ops_) != sum(2 + i for i in range(steps)):
        return
    sources = [j for i in range(steps) for j in range(2 + i)]
    for state in (0, 1):
        members = [(mixed, m) for mixed, j in zip(ops_, sources) if j == state and isinstance(mixed, MixedOp)
                   for m, parts in enumerate(mixed._reduce) if parts is not None]
        # stacked on output channels: the members must read the same channels
        if len(members) < 2 or len({mixed._reduce[m][0].in_channels for mixed, m in members}) != 1:
            continue
        group = ReduceGroup([mixed._reduce[m][:2] for mixed, m in members])
        for i, (mixed, m) in enumerate(members):
            mixed._reduce_group[m] = (group, i)


def fuse_preprocessing(model: nn.Module) -> int:
    """Run the cells of `model` faster around their MixedOps: every ``FactorizedReduce`` outside them
    (a cell's preprocessing after a reduction cell) as
    :class:`~dartscc_fast.nn.primitives.SubsampledFactorizedReduce`, and in every cell (a module whose
    ``_ops`` holds MixedOps) the stride-2 skip_connects (FactorizedReduce) of the edges leaving one
    state share that state's ReLU grids (:func:`~dartscc_fast.nn.primitives.open_grid_scope`, opened and
    closed by forward hooks on the cell). In a cell laid out as quark0/darts's (``_steps`` nodes, node
    i's edges ``offset + j`` reading state j), the FactorizedReduces of the edges leaving state 0 and
    of those leaving state 1 also form a :class:`~dartscc_fast.nn.primitives.ReduceGroup` each: in the
    soft forward one convolution per grid serves the whole group. The package's own cells
    (:class:`dartscc_fast.nn.Cell`) become :class:`FastCell`, whose nodes sum their edges in
    one pass.

    Every affine-free ``nn.BatchNorm2d`` becomes a :class:`~dartscc_fast.nn.batch_norm.FastBatchNorm2d`
    (:func:`~dartscc_fast.nn.batch_norm.use_fast_batch_norm`): in training mode on the CPU it runs
    :func:`dartscc_fast.ops.batch_norm_train`.

    The 1x1 ``ReLUConvBN`` preprocessing stays with torch: as a fused unit
    (:func:`dartscc_fast.ops.relu_dw_pw_conv` with a 1x1 depthwise kernel) it is slower forward+backward
    at the ``fmnist-paper`` shapes (``bench/bench_relu_dw_pw_conv.py``, docs/design.md). Its
    convolution, like every 1x1 stride-1 bias-free ``nn.Conv2d``, becomes a
    :class:`~dartscc_fast.nn.conv1x1.Conv1x1` (:func:`~dartscc_fast.nn.conv1x1.use_conv1x1`): the backward
    of planes of 14x14 and more as two batched matrix products instead of oneDNN's.

    In place: the modules keep their parameters, buffers and state_dict keys;
    only their class changes to a subclass with another forward. Returns how many
    FactorizedReduce modules changed.
    """
    inside = {id(m) for mixed in model.modules() if isinstance(mixed, MixedOp) for m in mixed.modules()}
    for mod in model.modules():
        ops_ = getattr(mod, "_ops", None)
        if isinstance(ops_, nn.ModuleList) and not isinstance(mod, MixedOp) \
                and any(isinstance(m, MixedOp) for m in ops_) and not getattr(mod, "_dartscc_grid_scope", False):
            # a cell: its edges' FactorizedReduces on one state share that state's grids
            mod.register_forward_pre_hook(_open_grid_scope)
            mod.register_forward_hook(_close_grid_scope, always_call=True)
            mod._dartscc_grid_scope = True
            _group_reduces(mod)
            if type(mod) is Cell:
                mod.__class__ = FastCell
    use_fast_batch_norm(model)
    use_conv1x1(model)
    changed = 0
    for mod in model.modules():
        if id(mod) in inside:
            continue
        if type(mod) is FactorizedReduce and _reduce_parts(mod) is not None:
            mod.__class__ = SubsampledFactorizedReduce
            changed += 1
    return changed
