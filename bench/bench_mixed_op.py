"""MixedOp forward+backward: the reference (quark0/darts semantics), torch.compile of it, ours.

"eager-channels_last" is the reference fed a channels_last input: it shows how
much of our gain is the layout (ours runs parametric candidates channels_last
on CPU) and how much is the fusion.

Soft weights over the seeds' space (sep_conv_3x3, max_pool_3x3, skip_connect),
and the hard path at k=8 (the full DARTS space) against the soft reference.
Run: pytest bench/bench_mixed_op.py -q
"""
import pytest
import torch

import dartscc_fast
from dartscc_fast import reference
from dartscc_fast.nn.primitives import DARTS_PRIMITIVES, FMNIST_PRIMITIVES

N, C = 64, 16


def make(primitives, stride, hw, per_sample, impl):
    torch.manual_seed(0)
    ref = reference.MixedOp(C, stride, primitives)
    if impl == "ours":
        op = dartscc_fast.MixedOp(C, stride, primitives)
        op.load_state_dict(ref.state_dict())
    else:
        op = ref
    k = len(primitives)
    x = torch.randn(N, C, hw, hw)
    if impl == "eager-channels_last":  # the reference given the layout ours uses inside
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    logits = torch.randn((N, k) if per_sample else (k,))
    return op, x, logits


def step_fn(op, x, logits, hard, compiled=False):
    w = torch.softmax(logits, -1).requires_grad_()
    if hard:
        w = dartscc_fast.gumbel_softmax(logits.clone().requires_grad_(), 1.0, True, seed=0)
    forward = torch.compile(op) if compiled else op
    params = list(op.parameters())

    def step():
        y = forward(x, w, hard=hard) if hard else forward(x, w)
        return torch.autograd.grad(y.sum(), [x] + params, allow_unused=True)

    return step


@pytest.mark.parametrize("per_sample", [False, True], ids=["edge", "sample"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [32, 28])
@pytest.mark.parametrize("impl", ["eager", "eager-channels_last", "compiled", "ours"])
def test_mixed_op_soft_seed_space(record, impl, hw, stride, per_sample):
    op, x, logits = make(FMNIST_PRIMITIVES, stride, hw, per_sample, impl)
    record(f"MixedOp soft fmnist k3 s{stride} {hw}x{hw} {'per-sample' if per_sample else 'per-edge'}", impl,
           step_fn(op, x, logits, False, impl == "compiled"))


@pytest.mark.parametrize("per_sample", [False, True], ids=["edge", "sample"])
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_mixed_op_hard_k8(record, impl, per_sample):
    # ours runs the hard path; the others are the soft reference users would run
    op, x, logits = make(DARTS_PRIMITIVES, 1, 32, per_sample, impl)
    record(f"MixedOp k8 32x32 ours-hard vs soft reference {'per-sample' if per_sample else 'per-edge'}", impl,
           step_fn(op, x, logits, impl == "ours", impl == "compiled"))


@pytest.mark.parametrize("impl", ["eager", "eager-channels_last", "compiled", "ours"])
def test_mixed_op_soft_k8(record, impl):
    op, x, logits = make(DARTS_PRIMITIVES, 1, 32, False, impl)
    record("MixedOp soft darts k8 s1 32x32 per-edge", impl, step_fn(op, x, logits, False, impl == "compiled"))
