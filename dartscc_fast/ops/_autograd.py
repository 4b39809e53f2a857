"""The autograd machinery every op shares: its formula registered with torch.library (what opcheck and
torch.compile use), the same formula run eagerly at less cost, no silent double backward, and the device
check of the fake kernels."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from dartscc_fast import _extension  # noqa: F401  (registers the ops)
from dartscc_fast.ops import cuda_gate

_ops = torch.ops.dartscc_fast


class OpSpec(NamedTuple):
    op: object                 # the OpOverload
    setup: Callable            # setup_context(ctx, inputs, output)
    backward: Callable         # backward(ctx, *grads) -> one gradient (a list for Tensor[]) per schema input
    lists: frozenset           # positions of the Tensor[] inputs


def autograd_spec(name: str, setup: Callable, backward: Callable, lists: Tuple[int, ...] = (),
              differentiable: bool = False) -> OpSpec:
    """Register ``backward`` as the op's autograd formula (what ``torch.ops``, ``opcheck`` and
    ``torch.compile`` use), and return the spec with which the wrappers run the same formula eagerly.

    A formula that calls a compiled backward op has no derivative itself: unless ``differentiable``
    (plain torch, as node_sum's), a double backward through it raises (:func:`_once_differentiable`)."""
    if not differentiable:
        backward = _once_differentiable(name, backward)
    torch.library.register_autograd(f"dartscc_fast::{name}", backward, setup_context=setup)
    return OpSpec(getattr(_ops, name).default, setup, backward, frozenset(lists))


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
    def forward(ctx, spec: OpSpec, layout: Tuple[int, ...], *flat):
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


def call_op(spec: OpSpec, *args):
    """``spec.op(*args)`` with autograd: the registered formula under torch.compile, else
    :class:`_EagerAutograd` when a gradient is needed, else the op below autograd; on a CUDA device whose
    kernel of this op has not passed its selftest, the op's torch path (:mod:`dartscc_fast.ops.cuda_gate`)."""
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


def check_same_device(op: str, *tensors) -> None:
    """``check_same_device`` of csrc/checks.cpp, for the fake kernels: a ``meta`` tensor among CPU inputs
    dispatches to them, which would otherwise return uninitialised memory on the first input's device."""
    flat = [t for a in tensors for t in (a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, Tensor)]
    for t in flat[1:]:
        if t.device != flat[0].device:
            raise RuntimeError(f"{op}: an input is on {t.device} but the other inputs are on {flat[0].device}")
