"""mixed_sum forward+backward at DARTS shapes: eager reference, torch.compile(reference), ours.

Run: pytest bench/bench_mixed_sum.py --benchmark-columns=median,iqr -q
"""
import pytest
import torch

import dartscc_fast
from dartscc_fast import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
_compiled = torch.compile(reference.mixed_sum, dynamic=False)


def setup(n, c, hw, k, per_sample, device):
    outs = [torch.randn(n, c, hw, hw, device=device, requires_grad=True) for _ in range(k)]
    w = torch.softmax(torch.randn((n, k) if per_sample else (k,), device=device), -1).requires_grad_()
    g = torch.randn(n, c, hw, hw, device=device)
    return outs, w, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True], ids=["edge", "sample"])
@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("hw", [32, 28])
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_mixed_sum_fwd_bwd(record, impl, hw, k, per_sample, device):
    n, c = 64, 16
    outs, w, g = setup(n, c, hw, k, per_sample, device)
    fn = {"eager": reference.mixed_sum, "compiled": _compiled, "ours": dartscc_fast.mixed_sum}[impl]

    def step():
        y = fn(outs, w)
        return torch.autograd.grad(y, outs + [w], g)

    # correctness, outside the timed call
    got = step()
    want = torch.autograd.grad(reference.mixed_sum(outs, w), outs + [w], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)
    size = n * c * hw * hw * 4
    moved = (k + 1) * size + (2 * k + 1) * size  # forward: k reads, 1 write; backward: g + k reads, k writes
    record(f"mixed_sum fwd+bwd {device} N{n} C{c} {hw}x{hw} k{k} {'per-sample' if per_sample else 'per-edge'}",
           impl, step, moved, device)
