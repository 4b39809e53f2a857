"""FactorizedReduce (skip_connect at stride 2) as a derived network runs it: quark0/darts's module (the
reference), torch.compile of it, and ``SubsampledFactorizedReduce`` (ours: the same function on the two
pixel grids it reads), in the latency table's setting: eval mode, inference, batch 64, forward only.

At the fmnist-paper networks' stride-2 shapes (C=32 at 28x28, 64 at 14x14) and the DARTS CIFAR one
(16 at 32x32), in channels_last (the CPU tables' layout) and contiguous.
Run: pytest bench/bench_factorized_reduce.py -q
"""
import pytest
import torch

from dartscc_fast.nn.primitives import FactorizedReduce, SubsampledFactorizedReduce

N = 64


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", [(32, 28), (64, 14), (16, 32)], ids=lambda v: "x".join(map(str, v)))
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_factorized_reduce(record, impl, shape, layout):
    c, hw = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    ref = FactorizedReduce(c, c).eval()
    m = SubsampledFactorizedReduce(c, c).eval() if impl == "ours" else ref
    m.load_state_dict(ref.state_dict())
    m = m.to(memory_format=fmt)
    f = torch.compile(m) if impl == "compiled" else m
    x = torch.randn(N, c, hw, hw).contiguous(memory_format=fmt)

    def step():
        with torch.inference_mode():
            return f(x)

    # the input read once and the output written once: the floor of the traffic
    moved = 4 * (x.numel() + x.numel() // 4)
    record(f"factorized_reduce {c}x{hw}x{hw} {layout}", impl, step, bytes_moved=moved)
