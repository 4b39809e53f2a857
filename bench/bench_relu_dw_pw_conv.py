"""relu_dw_pw_conv forward+backward: the reference (ReLU, depthwise and pointwise torch convolutions, as
in quark0/darts's SepConv and DilConv), torch.compile of it, and ours.

"eager-channels_last" is the reference fed a channels_last input, the layout in
which oneDNN's convolutions are fastest on the CPU.
At the fmnist-paper supernet's shapes (batch 64): C=16 at 28x28, 32 at 14x14, 64 at 7x7; and the DARTS
CIFAR shape C=16 at 32x32; sep_conv_3x3 units (stride 1 and 2) and dil_conv_5x5's.
Run: pytest bench/bench_relu_dw_pw_conv.py -q
"""
import pytest
import torch

import dartscc_fast
from dartscc_fast import reference

N = 64


@pytest.mark.parametrize("shape,k,stride,dilation", [
    ((16, 28), 3, 1, 1), ((16, 28), 3, 2, 1), ((32, 14), 3, 1, 1), ((64, 7), 3, 1, 1), ((16, 32), 3, 1, 1),
    ((16, 32), 5, 1, 2)], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("impl", ["eager", "eager-channels_last", "compiled", "ours"])
def test_relu_dw_pw_conv(record, impl, shape, k, stride, dilation):
    c, hw = shape
    torch.manual_seed(0)
    x = torch.randn(N, c, hw, hw)
    if impl == "eager-channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dw = torch.randn(c, 1, k, k, requires_grad=True)
    pw = torch.randn(c, c, 1, 1, requires_grad=True)
    f = dartscc_fast.relu_dw_pw_conv if impl == "ours" else reference.relu_dw_pw_conv
    if impl == "compiled":
        f = torch.compile(f)
    g = torch.randn(N, c, (hw - 1) // stride + 1, (hw - 1) // stride + 1)

    def step():
        return torch.autograd.grad(f(x, dw, pw, stride, dilation), [x, dw, pw], g)

    # x and y read and written once each way: the floor of the traffic
    moved = 4 * (2 * x.numel() + 2 * g.numel())
    record(f"relu_dw_pw_conv {c}x{hw}x{hw} k{k} s{stride} d{dilation}", impl, step, bytes_moved=moved)
