"""A cell node's sum of its k incoming edges (forward), at the fmnist-paper shapes: eager Python sum
(quark0/darts), torch.compile of it, ours (node_sum). The backward is the same in all three: every
input gets the output's gradient, no pass over memory.

Run: pytest bench/bench_node_sum.py --benchmark-columns=median,iqr -q
"""
import pytest
import torch

from dartscc_fast import ops


def _python_sum(xs):
    return sum(xs)


_compiled = torch.compile(_python_sum, dynamic=False)


@pytest.mark.parametrize("shape", [(64, 16, 28, 28), (64, 32, 14, 14)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_node_sum_fwd(record, impl, k, shape):
    xs = [torch.randn(shape) for _ in range(k)]
    fn = {"eager": _python_sum, "compiled": _compiled, "ours": ops.node_sum}[impl]
    assert torch.equal(fn(xs), sum(xs))  # correctness, outside the timed call
    size = torch.Size(shape).numel() * 4
    record(f"node_sum fwd cpu {'x'.join(map(str, shape))} k{k}", impl, lambda: fn(xs), (k + 1) * size)
