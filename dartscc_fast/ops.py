"""Typed wrappers of the compiled ops, with their fake kernels and autograd.

Each op's schema lives in ``csrc/<op>.cpp``, its CPU kernel in
``csrc/cpu/<op>_cpu.cpp``, its CUDA kernel in ``csrc/cuda/<op>_kernel.cu`` and its
pure-PyTorch reference in :mod:`dartscc_fast.reference`.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from dartscc_fast import _extension  # noqa: F401  (registers the ops)
from dartscc_fast import cuda_gate, reference
from dartscc_fast.kernel_spec import MAX_OPS, PRIM_CODES
from dartscc_fast.kernel_spec import hard_out_shape as _hard_out_shape, stats_dtype as _stats_dtype

_ops = torch.ops.dartscc_fast

__all__ = ["mixed_sum", "gumbel_softmax", "hard_mixed_sum", "hard_groups", "mixed_op_free", "relu_dw_pw_conv",
           "batch_norm_train", "node_sum",
           "PRIM_CODES", "MAX_OPS"]


# ------------------------------------------------------------------ autograd, registered and eager
class _Spec(NamedTuple):
    op: object                 # the OpOverload
    setup: Callable            # setup_context(ctx, inputs, output)
    backward: Callable         # backward(ctx, *grads) -> one gradient (a list for Tensor[]) per schema input
    lists: frozenset           # positions of the Tensor[] inputs


def _autograd(name: str, setup: Callable, backward: Callable, lists: Tuple[int, ...] = (),
              differentiable: bool = False) -> _Spec:
    """Register ``backward`` as the op's autograd formula (what ``torch.ops``, ``opcheck`` and
    ``torch.compile`` use), and return the spec with which the wrappers run the same formula eagerly.

    A formula that calls a compiled backward op has no derivative itself: unless ``differentiable``
    (plain torch, as node_sum's), a double backward through it raises (:func:`_once_differentiable`)."""
    if not differentiable:
        backward = _once_differentiable(name, backward)
    torch.library.register_autograd(f"dartscc_fast::{name}", backward, setup_context=setup)
    return _Spec(getattr(_ops, name).default, setup, backward, frozenset(lists))


class _NoDoubleBackward(torch.autograd.Function):
    """The identity on a backward's gradients, tied to what they depend on; its own backward raises."""

    @staticmethod
    def forward(ctx, msg: str, n: int, *tensors):
        ctx.msg = msg
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.msg)


def _once_differentiable(name: str, backward: Callable) -> Callable:
    """``backward`` run without a graph. When one was asked for (``create_graph=True``) and the gradients
    depend on something that requires grad, they come out of a node that raises, naming the op, when a
    double backward reaches it: the compiled backward ops have no autograd, so that derivative would be
    silently zero."""
    msg = (f"dartscc_fast.ops.{name}: double backward (the gradient of its gradient, create_graph=True) is not "
           f"supported: its backward is a compiled kernel with no derivative of its own; use "
           f"dartscc_fast.reference.{name} where higher-order derivatives are needed")

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return backward(ctx, *grads)
        with torch.no_grad():
            out = backward(ctx, *grads)
        deps = [t for t in (*grads, *getattr(ctx, "saved_tensors", ())) if isinstance(t, Tensor) and t.requires_grad]
        parts = out if isinstance(out, tuple) else (out,)
        flat = [t for p in parts for t in (p if isinstance(p, list) else [p]) if isinstance(t, Tensor)]
        if not deps or not flat:
            return out
        it = iter(_NoDoubleBackward.apply(msg, len(flat), *flat, *deps))
        rebuilt = tuple([next(it) if isinstance(t, Tensor) else t for t in p] if isinstance(p, list)
                        else next(it) if isinstance(p, Tensor) else p for p in parts)
        return rebuilt if isinstance(out, tuple) else rebuilt[0]

    return wrapper


# Dispatch below the autograd keys, as torch.library's own autograd kernel does; where a torch
# lacks this (private) guard, the op's registered autograd kernel redispatches instead.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


class _EagerAutograd(torch.autograd.Function):
    """The registered formula as a plain autograd.Function around the op called below autograd.

    Eager calls through the registered Python autograd kernel pay its argument handling
    (defaults, pytree flattening, a redispatch) on every forward and backward: about 16 ms
    of a 500 ms fmnist-paper search step at 2 threads, with ~170 op calls per step
    (measured against this path in alternating runs). Same setup_context, same backward."""

    @staticmethod
    def forward(ctx, spec: _Spec, layout: Tuple[int, ...], *flat):
        inputs = _unflatten(layout, flat)
        with _below_autograd():
            out = spec.op(*inputs)
        spec.setup(ctx, inputs, out)
        ctx.spec, ctx.layout = spec, layout
        return out

    @staticmethod
    def backward(ctx, *grads):
        g = ctx.spec.backward(ctx, *grads)
        flat: List[Optional[Tensor]] = [None, None]
        for n, gi in zip(ctx.layout, g if isinstance(g, tuple) else (g,)):
            if n < 0:
                flat.append(gi)
            else:
                flat.extend(gi if gi is not None else [None] * n)
        return tuple(flat)


def _unflatten(layout: Tuple[int, ...], flat) -> list:
    args, i = [], 0
    for n in layout:
        if n < 0:
            args.append(flat[i])
            i += 1
        else:
            args.append(list(flat[i:i + n]))
            i += n
    return args


def _call(spec: _Spec, *args):
    """``spec.op(*args)`` with autograd: the registered formula under torch.compile, else
    :class:`_EagerAutograd` when a gradient is needed, else the op below autograd; on a CUDA device whose
    kernel of this op has not passed its selftest, the op's torch path (:mod:`dartscc_fast.cuda_gate`)."""
    torch_path = cuda_gate.torch_path_for(spec.op, args)
    if torch_path is not None:
        return torch_path(*args)
    if torch.compiler.is_compiling():
        return spec.op(*args)
    flat = [t for i, a in enumerate(args) for t in (a if i in spec.lists else (a,))]
    if not (torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in flat)):
        with _below_autograd():
            return spec.op(*args)
    layout = tuple(len(a) if i in spec.lists else -1 for i, a in enumerate(args))
    return _EagerAutograd.apply(spec, layout, *flat)


# ----------------------------------------------------------------------------- mixed_sum
def mixed_sum(outputs: Union[Sequence[Tensor], Tensor], weights: Tensor) -> Tensor:
    """``sum_m weights[..., m] * outputs[m]`` in one pass over memory.

    Args:
        outputs: the k candidate outputs, a list of tensors of one shape or a
            stacked tensor ``[k, N, ...]``.
        weights: ``[k]`` (one weight per op) or ``[N, k]`` (per sample, as
            DARTS-CC draws Gumbel weights per example).
    Returns:
        A tensor of the outputs' shape, in their memory format.
    """
    if isinstance(outputs, Tensor):
        if outputs.dim() < 1:
            raise ValueError("mixed_sum: a stacked outputs tensor must have shape [k, ...], got a scalar")
        outputs = outputs.unbind(0)
    return _call(_MIXED_SUM, list(outputs), weights)


def is_non_overlapping_and_dense(t: Tensor) -> bool:
    """Whether t's elements fill exactly t.numel() slots of memory, in any order."""
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _layout_like(outputs: Sequence[Tensor], per_sample: bool) -> bool:
    """Mirror of ``same_layout`` in csrc/checks.cpp: may the kernels keep the outputs' strides?"""
    o0 = outputs[0]
    ok = is_non_overlapping_and_dense(o0)
    if ok and per_sample and o0.dim() >= 1 and o0.shape[0] > 1:
        ok = o0.stride(0) * o0.shape[0] == o0.numel()
    return ok and all(o.stride() == o0.stride() for o in outputs[1:])


def _empty_out(outputs: Sequence[Tensor], per_sample: bool) -> Tensor:
    o0 = outputs[0]
    if _layout_like(outputs, per_sample):
        return torch.empty_strided(o0.shape, o0.stride(), dtype=o0.dtype, device=o0.device)
    return torch.empty(o0.shape, dtype=o0.dtype, device=o0.device)


def _same_device(op: str, *tensors) -> None:
    """``check_same_device`` of csrc/checks.cpp, for the fake kernels: a ``meta`` tensor among CPU inputs
    dispatches to them, which would otherwise return uninitialised memory on the first input's device."""
    flat = [t for a in tensors for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, Tensor)]
    for t in flat[1:]:
        if t.device != flat[0].device:
            raise RuntimeError(f"{op}: an input is on {t.device} but the other inputs are on {flat[0].device}")


@torch.library.register_fake("dartscc_fast::mixed_sum")
def _mixed_sum_fake(outputs, weights):
    _same_device("mixed_sum", outputs, weights)
    torch._check(len(outputs) >= 1 and len(outputs) <= MAX_OPS)
    torch._check(weights.shape[-1] == len(outputs))
    return _empty_out(outputs, weights.dim() == 2)


@torch.library.register_fake("dartscc_fast::mixed_sum_backward")
def _mixed_sum_backward_fake(grad, outputs, weights):
    per_sample = weights.dim() == 2
    ok = _layout_like(outputs, per_sample) and grad.stride() == outputs[0].stride()
    if ok:
        grads = [torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=o.device) for o in outputs]
    else:
        grads = [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in outputs]
    return grads, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _mixed_sum_setup(ctx, inputs, output):
    outputs, weights = inputs
    ctx.k = len(outputs)
    ctx.save_for_backward(*outputs, weights)


def _mixed_sum_backward(ctx, grad):
    *outputs, weights = ctx.saved_tensors
    grad_outputs, grad_weights = _ops.mixed_sum_backward.default(grad, outputs, weights)
    return list(grad_outputs), grad_weights


_MIXED_SUM = _autograd("mixed_sum", _mixed_sum_setup, _mixed_sum_backward, lists=(0,))


# ------------------------------------------------------------------------ gumbel_softmax
def _seed_tensor(generator: Optional[torch.Generator], seed: Union[int, Tensor, None]) -> Tensor:
    if seed is None:
        device = generator.device if generator is not None else "cpu"
        seed = torch.randint(-(2 ** 63), 2 ** 63 - 1, (), generator=generator, device=device,
                             dtype=torch.int64)
        return seed.cpu()
    if isinstance(seed, Tensor):
        return seed.to(device="cpu", dtype=torch.int64).reshape(())
    return torch.tensor(int(seed) & (2 ** 64 - 1), dtype=torch.uint64).view(torch.int64) \
        if seed >= 2 ** 63 else torch.tensor(int(seed), dtype=torch.int64)


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False, *,
                   generator: Optional[torch.Generator] = None,
                   seed: Union[int, Tensor, None] = None, return_soft: bool = False):
    """Gumbel-Softmax over the last dimension, all edges in one kernel.

    ``softmax((logits + G) / tau)`` with Gumbel noise G from a counter-based
    Philox generator keyed by one 64-bit seed, so the CPU and CUDA kernels draw
    the same sample. The seed is drawn from ``generator`` (or the default
    generator) unless ``seed`` is given. With ``hard=True`` the result is the
    exact one-hot of the argmax and its gradient is the soft sample's
    (straight-through, as GDAS).

    Args:
        logits: ``[E, k]`` or ``[N, E, k]`` (any leading dimensions work).
        tau: the temperature, finite and > 0.
        return_soft: also return the soft sample.
    """
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"gumbel_softmax: tau must be a finite number > 0, got {tau!r}")
    y, soft = _call(_GUMBEL_SOFTMAX, logits, _seed_tensor(generator, seed), float(tau), bool(hard))
    return (y, soft) if return_soft else y


@torch.library.register_fake("dartscc_fast::gumbel_softmax")
def _gumbel_softmax_fake(logits, seed, tau, hard):
    return torch.empty_like(logits, memory_format=torch.contiguous_format), \
        torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("dartscc_fast::gumbel_softmax_backward")
def _gumbel_softmax_backward_fake(grad, soft, tau):
    return torch.empty_like(soft, memory_format=torch.contiguous_format)


def _gumbel_setup(ctx, inputs, output):
    ctx.tau = inputs[2]
    ctx.save_for_backward(output[1])


def _gumbel_backward(ctx, grad_y, grad_soft):
    (soft,) = ctx.saved_tensors
    if grad_y is None:
        grad_y = grad_soft
    elif grad_soft is not None:
        grad_y = grad_y + grad_soft  # y is straight-through, so both share soft's Jacobian
    return _ops.gumbel_softmax_backward.default(grad_y, soft, ctx.tau), None, None, None


_GUMBEL_SOFTMAX = _autograd("gumbel_softmax", _gumbel_setup, _gumbel_backward)


# ------------------------------------------------------------------------ hard_mixed_sum
def hard_groups(index: Tensor, k: int) -> List[Tensor]:
    """For each op m, the (sorted) samples whose hard weights picked m."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=k).tolist()
    return list(torch.split(order, counts))


def hard_mixed_sum(outputs: Sequence[Tensor], weights: Tensor, index: Tensor) -> Tensor:
    """Scatter the sampled ops' outputs back into one batch (the hard, GDAS path).

    ``y[n] = weights[n, index[n]] * outputs[index[n]][pos(n)] + sum_{m != index[n]} weights[n, m]``
    where ``outputs[m]`` holds, in sample order, only the samples that drew op m
    (:func:`hard_groups`), so each op runs on its own samples only. The weights
    of the ops not drawn are zero in value but still get the straight-through
    gradient ``sum(g[n])``.

    Args:
        outputs: k tensors ``[count_m, ...]`` (empty for ops nobody drew).
        weights: hard Gumbel weights ``[k]`` or ``[N, k]``.
        index: ``[N]`` int64, the op each sample drew.
    """
    return _call(_HARD_MIXED_SUM, list(outputs), weights, index)


@torch.library.register_fake("dartscc_fast::hard_mixed_sum")
def _hard_mixed_sum_fake(outputs, weights, index):
    _same_device("hard_mixed_sum", outputs, weights, index)
    o0 = outputs[0]
    return torch.empty(_hard_out_shape(outputs, index), dtype=o0.dtype, device=o0.device)


@torch.library.register_fake("dartscc_fast::hard_mixed_sum_backward")
def _hard_mixed_sum_backward_fake(grad, outputs, weights, index):
    return [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in outputs], \
        torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _hard_setup(ctx, inputs, output):
    outputs, weights, index = inputs
    ctx.save_for_backward(*outputs, weights, index)


def _hard_backward(ctx, grad):
    *outputs, weights, index = ctx.saved_tensors
    grad_outputs, grad_weights = _ops.hard_mixed_sum_backward.default(grad, outputs, weights, index)
    return list(grad_outputs), grad_weights, None


_HARD_MIXED_SUM = _autograd("hard_mixed_sum", _hard_setup, _hard_backward, lists=(0,))


# ------------------------------------------------------------------------- mixed_op_free
def prim_codes(prims: Sequence[Union[str, int]]) -> List[int]:
    """Map slot names ('param', 'none', 'identity', 'max_pool', 'avg_pool') to codes."""
    codes = []
    for p in prims:
        if isinstance(p, str):
            if p not in PRIM_CODES:
                raise ValueError(f"mixed_op_free: unknown slot {p!r}; expected one of {sorted(PRIM_CODES)}")
            codes.append(PRIM_CODES[p])
        else:
            codes.append(int(p))
    return codes


def mixed_op_free(x: Tensor, param_outputs: Sequence[Tensor], weights: Tensor,
                  prims: Sequence[Union[str, int]], stride: int = 1, eps: float = 1e-5,
                  bn_stats: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """A DARTS mixed op whose parameter-free candidates are computed on the fly.

    Slot m of ``prims`` says what candidate m is: ``'param'`` (its output is the
    next tensor of ``param_outputs``), ``'none'`` (zero), ``'identity'``
    (stride 1 only), ``'max_pool'`` / ``'avg_pool'`` (3x3, padding 1,
    ``count_include_pad=False``, then ``BatchNorm2d(C, affine=False)``). Pool
    outputs are never stored: forward and backward recompute them from ``x``.

    Args:
        x: the edge input ``[N, C, H, W]``.
        param_outputs: the parametric candidates' outputs ``[N, C, Ho, Wo]``.
        weights: ``[k]`` or ``[N, k]``.
        stride: 1 or 2.
        eps: the pools' BatchNorm eps.
        bn_stats: ``[P, 2, C]`` running (mean, var) of the P pool slots, to
            normalise with (BatchNorm in eval mode); None normalises with the
            batch statistics (training mode).
    Returns:
        ``(y, stats)``: the mixed output and the ``[P, 2, C]`` (mean, biased
        var) used, from which a caller updates running statistics.
    """
    return _call(_MIXED_OP_FREE, x, list(param_outputs), weights, prim_codes(prims), int(stride),
                                      float(eps), bn_stats)


def _free_out_hw(x, stride):
    return (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1


@torch.library.register_fake("dartscc_fast::mixed_op_free")
def _mixed_op_free_fake(x, param_outputs, weights, prims, stride, eps, bn_stats):
    _same_device("mixed_op_free", x, param_outputs, weights, bn_stats)
    ho, wo = _free_out_hw(x, stride)
    n_pool = sum(1 for p in prims if p in (PRIM_CODES["max_pool"], PRIM_CODES["avg_pool"]))
    mf = _memory_format(x)
    y = torch.empty((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype, device=x.device).contiguous(
        memory_format=mf)
    stats = torch.empty((n_pool, 2, x.shape[1]), dtype=_stats_dtype(x.dtype), device=x.device)
    return y, stats


def _memory_format(x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("dartscc_fast::mixed_op_free_backward")
def _mixed_op_free_backward_fake(grad, x, param_outputs, weights, prims, stride, eps, stats, stats_fixed):
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device).contiguous(memory_format=_memory_format(x))
    gp = [torch.empty(p.shape, dtype=p.dtype, device=p.device).contiguous(memory_format=_memory_format(p))
          for p in param_outputs]
    return gx, gp, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)


def _free_setup(ctx, inputs, output):
    x, param_outputs, weights, prims, stride, eps, bn_stats = inputs
    ctx.prims, ctx.stride, ctx.eps = prims, stride, eps
    ctx.stats_fixed = bn_stats is not None
    ctx.n_param = len(param_outputs)
    ctx.save_for_backward(x, weights, output[1], *param_outputs)


def _free_backward(ctx, grad_y, grad_stats):
    x, weights, stats, *param_outputs = ctx.saved_tensors
    if grad_y is None:
        grad_y = x.new_zeros((x.shape[0], x.shape[1]) + _free_out_hw(x, ctx.stride))
    gx, gp, gw = _ops.mixed_op_free_backward.default(grad_y, x, param_outputs, weights, ctx.prims,
                                                     ctx.stride, ctx.eps, stats, ctx.stats_fixed)
    return gx, list(gp), gw, None, None, None, None


_MIXED_OP_FREE = _autograd("mixed_op_free", _free_setup, _free_backward, lists=(1,))


# ----------------------------------------------------------------------- relu_dw_pw_conv
def relu_dw_pw_conv(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int = 1, dilation: int = 1) -> Tensor:
    """``pointwise(depthwise(relu(x)))``: the unit DARTS's convolution candidates are made of.

    ``SepConv`` is two of them, each followed by BatchNorm; ``DilConv`` is one.
    The ReLU and depthwise outputs are never stored (the backward recomputes
    them per sample), so forward and backward each take one pass over x.

    Args:
        x: ``[N, C, H, W]``, float32 or float64, on the CPU.
        dw_weight: ``[C, 1, K, K]`` (odd K), the depthwise convolution, padding
            ``dilation * (K - 1) // 2``.
        pw_weight: ``[C_out, C, 1, 1]``, the pointwise convolution (no bias).
        stride, dilation: of the depthwise convolution.

    Returns:
        ``[N, C_out, (H - 1) // stride + 1, (W - 1) // stride + 1]``, contiguous.

    The compiled kernel is CPU-only: on other devices this is
    :func:`dartscc_fast.reference.relu_dw_pw_conv` (cuDNN's convolutions).
    """
    if x.device.type != "cpu":
        return reference.relu_dw_pw_conv(x, dw_weight, pw_weight, stride, dilation)
    return _call(_RELU_DW_PW_CONV, x, dw_weight, pw_weight, stride, dilation)


def _dw_pw_out_shape(x, dw_weight, pw_weight, stride):
    torch._check(x.dim() == 4 and dw_weight.dim() == 4 and pw_weight.dim() == 4)
    torch._check(stride >= 1)
    n, _, h, w = x.shape
    return (n, pw_weight.shape[0], (h - 1) // stride + 1, (w - 1) // stride + 1)


@torch.library.register_fake("dartscc_fast::relu_dw_pw_conv")
def _relu_dw_pw_conv_fake(x, dw_weight, pw_weight, stride, dilation):
    _same_device("relu_dw_pw_conv", x, dw_weight, pw_weight)
    return x.new_empty(_dw_pw_out_shape(x, dw_weight, pw_weight, stride))


@torch.library.register_fake("dartscc_fast::relu_dw_pw_conv_backward")
def _relu_dw_pw_conv_backward_fake(grad, x, dw_weight, pw_weight, stride, dilation):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(dw_weight),
            torch.empty_like(pw_weight))


def _dw_pw_setup(ctx, inputs, output):
    x, dw_weight, pw_weight, stride, dilation = inputs
    ctx.stride, ctx.dilation = stride, dilation
    ctx.save_for_backward(x, dw_weight, pw_weight)


def _dw_pw_backward(ctx, grad):
    x, dw_weight, pw_weight = ctx.saved_tensors
    gx, gdw, gpw = _ops.relu_dw_pw_conv_backward.default(grad, x, dw_weight, pw_weight, ctx.stride, ctx.dilation)
    return gx, gdw, gpw, None, None


_RELU_DW_PW_CONV = _autograd("relu_dw_pw_conv", _dw_pw_setup, _dw_pw_backward)


# ---------------------------------------------------------------------- batch_norm_train
def batch_norm_train(x: Tensor, eps: float = 1e-5) -> Tuple[Tensor, Tensor, Tensor]:
    """Affine-free BatchNorm in training mode, the BatchNorm of DARTS's search cells.

    ``y = (x - mean) / sqrt(var + eps)`` with each channel's batch mean and
    biased variance, as ``F.batch_norm(x, None, None, training=True, eps=eps)``.
    The statistics pass reads x's planes in memory order (torch's CPU kernel
    visits a channel's planes N*C*H*W apart).

    Args:
        x: ``[N, C, *]``, float32 or float64, on the CPU, more than one value
            per channel.
        eps: added to the variance.
    Returns:
        ``(y, mean, var)``: y contiguous; ``mean`` and ``var`` (biased) ``[C]``,
        for the caller's running-statistics update.

    The compiled kernel is CPU-only: on other devices this is
    :func:`dartscc_fast.reference.batch_norm_train` (torch's kernel).
    """
    if x.device.type != "cpu":
        return reference.batch_norm_train(x, eps)
    return _call(_BATCH_NORM_TRAIN, x, float(eps))


@torch.library.register_fake("dartscc_fast::batch_norm_train")
def _batch_norm_train_fake(x, eps):
    torch._check(x.dim() >= 2)
    c = x.shape[1]
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty((c,)), x.new_empty((c,)))


@torch.library.register_fake("dartscc_fast::batch_norm_train_backward")
def _batch_norm_train_backward_fake(grad, x, mean, var, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _bn_setup(ctx, inputs, output):
    x, eps = inputs
    ctx.eps = eps
    ctx.mark_non_differentiable(output[1], output[2])  # statistics: for running averages, not for gradients
    ctx.save_for_backward(x, output[1], output[2])


def _bn_backward(ctx, grad_y, grad_mean, grad_var):
    x, mean, var = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    return _ops.batch_norm_train_backward.default(grad_y, x, mean, var, ctx.eps), None


_BATCH_NORM_TRAIN = _autograd("batch_norm_train", _bn_setup, _bn_backward)


# ------------------------------------------------------------------------------ node_sum
def node_sum(xs: Sequence[Tensor]) -> Tensor:
    """``xs[0] + xs[1] + ... + xs[k-1]``, added in that order, in one pass over memory.

    A DARTS cell node sums its incoming edges' outputs; Python's ``sum`` does
    that as k additions, each reading and writing a full tensor (the first adds
    the outputs to 0). The same values, each input read once and the output
    written once.

    Args:
        xs: one or more tensors of one shape and dtype on one device.
    Returns:
        A new contiguous tensor (also for one input). Every input's gradient is
        the output's gradient.

    The compiled kernel is for contiguous float32/float64 CPU tensors; other
    inputs get :func:`dartscc_fast.reference.node_sum`.
    """
    xs = list(xs)
    if not xs:
        raise ValueError("node_sum: xs must hold at least one tensor")
    x0 = xs[0]
    if x0.device.type != "cpu" or x0.dtype not in (torch.float32, torch.float64) \
            or not all(x.is_contiguous() for x in xs):
        return reference.node_sum(xs)
    return _call(_NODE_SUM, xs)


@torch.library.register_fake("dartscc_fast::node_sum")
def _node_sum_fake(xs):
    torch._check(len(xs) >= 1)
    _same_device("node_sum", xs)
    return torch.empty(xs[0].shape, dtype=xs[0].dtype, device=xs[0].device)


def _node_sum_setup(ctx, inputs, output):
    ctx.k = len(inputs[0])


def _node_sum_backward(ctx, grad):
    return [grad] * ctx.k,


_NODE_SUM = _autograd("node_sum", _node_sum_setup, _node_sum_backward, lists=(0,), differentiable=True)
