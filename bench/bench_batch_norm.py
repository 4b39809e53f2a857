"""Affine-free training-mode BatchNorm forward+backward at DARTS shapes: eager nn.BatchNorm2d,
torch.compile of it, ours (FastBatchNorm2d -> batch_norm_train).

Run: pytest bench/bench_batch_norm.py --benchmark-columns=median,iqr -q
"""
import copy

import pytest
import torch
from torch import nn

from dartscc_fast.nn.batch_norm import use_fast_batch_norm

SHAPES = [(64, 16, 28, 28), (64, 16, 32, 32), (64, 32, 14, 14), (64, 64, 7, 7)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_batch_norm_fwd_bwd(record, impl, shape):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(shape[1], affine=False)
    bn = copy.deepcopy(ref)
    if impl == "ours":
        use_fast_batch_norm(bn)
    fn = torch.compile(bn, dynamic=False) if impl == "compiled" else bn
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    g = torch.randn(shape)

    def step():
        return torch.autograd.grad(fn(x), x, g)

    # correctness, outside the timed call
    torch.testing.assert_close(step()[0], torch.autograd.grad(ref(x), x, g)[0], atol=1e-4, rtol=1e-4)
    n = x.numel() * 4
    # forward: x read twice (statistics, normalise), y written; backward: g and x read twice, gx written
    record(f"batch_norm fwd+bwd cpu {'x'.join(map(str, shape))}", impl, step, 3 * n + 5 * n)
