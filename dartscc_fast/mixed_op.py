"""The drop-in fast ``MixedOp`` and ``replace_mixed_ops``.

Same modules, submodule names and state_dict keys as quark0/darts; only the
forward differs. Parameter-free candidates (zero, identity, pooling + BatchNorm)
are computed inside the fused weighted sum (:func:`dartscc_fast.ops.mixed_op_free`);
only the parametric candidates run as modules. With hard weights only the
drawn candidate runs (:func:`dartscc_fast.ops.hard_mixed_sum`), a drawn pool
through the same fused kernel.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from dartscc_fast import ops
from dartscc_fast.primitives import DARTS_PRIMITIVES, Identity, Zero, check_primitives, search_candidate

__all__ = ["MixedOp", "replace_mixed_ops"]


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

    ``channels_last_params = True`` (off by default) runs the parametric
    candidates on a channels_last copy of ``x`` on CPU: oneDNN's depthwise and
    pointwise convolutions are 1.5-3x faster in that layout here, but torch
    2.13's oneDNN crashed (SIGSEGV in the channels_last 1x1-convolution weight
    gradient) in our small-batch search tests, so it stays opt-in. Dilated
    convolutions at stride 2 keep NCHW (measured slower), and so does the hard
    path.
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
        self._bns = [bn for (k, bn, _), kind in zip(slots, self._kinds) if kind in ("max_pool", "avg_pool")]
        self._codes = ops.prim_codes(self._kinds)
        self.stride = stride
        self._cl = [kind == "param" and not (stride == 2 and type(op).__name__ == "DilConv")
                    for op, kind in zip(ops_, self._kinds)]
        self.primitives = list(primitives) if primitives is not None else [type(o).__name__ for o in ops_]
        eps = {bn.eps for bn in self._bns}
        if len(eps) > 1:
            self._kinds = ["param" if k in ("max_pool", "avg_pool") else k for k in self._kinds]
            self._codes, self._bns = ops.prim_codes(self._kinds), []
        self._eps = eps.pop() if len(eps) == 1 else 1e-5

    def extra_repr(self) -> str:
        return f"stride={self.stride}, fused={[p for p, k in zip(self.primitives, self._kinds) if k != 'param']}"

    def forward(self, x: Tensor, weights: Tensor, hard: bool = False) -> Tensor:
        if weights.dim() not in (1, 2) or weights.shape[-1] != len(self._ops):
            raise ValueError(f"MixedOp: weights must have shape [k] or [N, k] with k={len(self._ops)}, "
                             f"got {list(weights.shape)}")
        if hard:
            return self._forward_hard(x, weights)
        xp = self._param_input(x) if any(self._cl) else x
        params = [op(xp if cl else x) for op, kind, cl in zip(self._ops, self._kinds, self._cl) if kind == "param"]
        if all(kind == "param" for kind in self._kinds):
            return ops.mixed_sum(params, weights)
        bn_stats = self._running_stats() if self._bns and not self._bn_uses_batch_stats() else None
        y, stats = ops.mixed_op_free(x, params, weights, self._codes, self.stride, self._eps, bn_stats)
        if self._bns and bn_stats is None:
            self._update_running_stats(stats, x)
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
    def _run_candidate(self, m: int, x: Tensor) -> Tensor:
        """Candidate m on x: a fused pool + BatchNorm runs through the kernel, never torch's pooling."""
        kind = self._kinds[m]
        if kind not in ("max_pool", "avg_pool") or x.shape[0] == 0:
            return self._ops[m](x)
        bn = self._ops[m][1]
        batch_stats = bn.training or not bn.track_running_stats or bn.running_mean is None
        bn_stats = None if batch_stats else torch.stack([bn.running_mean, bn.running_var])[None]
        y, stats = ops.mixed_op_free(x, [], x.new_ones(1), [kind], self.stride, bn.eps, bn_stats)
        if batch_stats:
            _update_bn(bn, stats[0], x, self.stride)
        return y

    def _forward_hard(self, x: Tensor, weights: Tensor) -> Tensor:
        k = len(self._ops)
        if weights.dim() == 1:
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


@torch.no_grad()
def _update_bn(bn: nn.BatchNorm2d, mean_var: Tensor, x: Tensor, stride: int) -> None:
    """Update bn's running statistics as nn.BatchNorm2d does, from the batch (mean, biased var) of a fused pool."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    mean, var = mean_var
    ho, wo = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    count = x.shape[0] * ho * wo
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    unbiased = var * (count / max(count - 1, 1))
    bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean), alpha=momentum)
    bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var), alpha=momentum)


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
