"""The 1x1 convolutions of a DARTS search network, forward+backward at batch 64 (NCHW, the search's
layout): eager ``nn.Conv2d`` (oneDNN; what quark0/darts runs), torch.compile of it, ours
(:class:`dartscc_fast.nn.conv1x1.Conv1x1`: the same forward, the backward as two batched matrix products).

Shapes: the fmnist-paper cells' preprocessing (48 -> 16 and 48/64 -> 32 channels at 28x28, 128 -> 64 at
14x14). Run: pytest bench/bench_conv1x1.py --benchmark-columns=median,iqr -q
"""
import pytest
import torch
from torch import nn

from dartscc_fast.nn.conv1x1 import use_conv1x1

SHAPES = [(48, 16, 28), (48, 32, 28), (64, 32, 28), (128, 64, 14)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}to{s[1]}_{s[2]}x{s[2]}")
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_conv1x1_fwd_bwd(record, impl, shape):
    ci, co, h = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(ci, co, 1, bias=False)
    ref = nn.Conv2d(ci, co, 1, bias=False)
    ref.load_state_dict(conv.state_dict())
    if impl == "ours":
        assert use_conv1x1(conv) == 1
    fn = torch.compile(conv, dynamic=False) if impl == "compiled" else conv
    x = torch.randn(64, ci, h, h, requires_grad=True)
    g = torch.randn(64, co, h, h)

    def run():
        x.grad = None
        conv.weight.grad = None
        fn(x).backward(g)

    run()  # correctness, outside the timed calls
    gx, gw = x.grad.clone(), conv.weight.grad.clone()
    x.grad = None
    ref(x).backward(g)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, ref.weight.grad, rtol=1e-4, atol=1e-3)
    record(f"conv1x1 fwd+bwd cpu {ci}->{co} {h}x{h}", impl, run)
