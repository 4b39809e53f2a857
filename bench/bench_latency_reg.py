"""Latency lookup + regulariser, forward and backward, for the DARTS 8-cell space (darts-cifar):
eager reference, torch.compile(reference), ours.

- "lookup+reg": the whole per-step path of a search that reads its table each
  step: look up L [layers * 14, 8] for every edge of the supernet (Python dict
  vs the compiled hash map), sum it per cell type into [28, 8], then
  Lat_S = sum S_type * L * w and its gradients for w and S.
- "reg": the regulariser alone with L looked up once (the usual case), for
  per-edge weights [28, 8] and per-sample weights [64, 28, 8] with one S,
  and [1024, 28, 8] with a per-sample S [1024, 3] (where the arithmetic, not
  the call overhead, starts to count).

At these sizes a call is mostly overhead: the custom op's Python autograd
(torch.library.register_autograd) costs about as much as its two kernels.

Run: pytest bench/bench_latency_reg.py -q
"""
import random

import pytest
import torch

from dartscc_fast import reference
from dartscc_fast.latency import LatencyTable, edge_configs, latency_reg, space_configs
from dartscc_fast.space import get_space

SPACE = get_space("darts-cifar")
TYPES = SPACE.type_index().tolist()
E2 = 2 * SPACE.num_edges
_compiled_reg = torch.compile(reference.latency_reg, dynamic=False)


def _table():
    rng = random.Random(0)
    t = LatencyTable(meta={"device": "cpu", "batch": 64, "dtype": "float32"})
    for c in space_configs(SPACE, 64):
        t.add(c, rng.uniform(0.01, 5.0))
    return t


TABLE = _table()
DICT = {k: e["median"] for k, e in TABLE.entries.items()}
KEYS = ["" if c is None else c.key() for row in edge_configs(SPACE, 64) for c in row]
ROWS = torch.tensor([e.edge + (SPACE.num_edges if e.reduction else 0) for e in SPACE.edges()])


def reference_lookup():
    """What a user writes without the package: a dict lookup per candidate, then a per-cell-type sum."""
    L = reference.latency_lookup(DICT, KEYS, SPACE.k)
    return torch.zeros(E2, SPACE.k, dtype=L.dtype).index_add_(0, ROWS, L).float()


def ours_lookup():
    return TABLE.supernet_latency(SPACE).float()


def inputs(n):
    """w [n, 28, 8] (n = 0: [28, 8]) and S [3]; for n > 64 also a per-sample S [n, 3]."""
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn((n, E2, SPACE.k) if n else (E2, SPACE.k), generator=g), -1)
    S = -torch.rand((n, 3) if n > 64 else (3,), generator=g).log()  # Dirichlet(1, 1, 1): normalised exponentials
    S = S / S.sum(-1, keepdim=True)
    return w.requires_grad_(), S.requires_grad_()


def make_step(impl, n, lookup_each_step):
    w, S = inputs(n)
    reg = {"eager": reference.latency_reg, "compiled": _compiled_reg, "ours": latency_reg}[impl]
    lookup = ours_lookup if impl == "ours" else reference_lookup
    L_fixed = lookup()

    def step():
        L = lookup() if lookup_each_step else L_fixed
        y = reg(w, L, S, TYPES)
        return torch.autograd.grad(y.sum(), (w, S))

    return step


def shape(n):
    return f"w [{n}, 28, 8]" + (f" S [{n}, 3]" if n > 64 else "") if n else "w [28, 8]"


@pytest.mark.parametrize("n", [0, 64])
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_lookup_and_reg(record, impl, n):
    step = make_step(impl, n, True)
    want = make_step("eager", n, True)()
    for a, b in zip(step(), want):  # correctness, outside the timed call
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    record(f"latency lookup+reg fwd+bwd darts-cifar {shape(n)}", impl, step)


@pytest.mark.parametrize("n", [0, 64, 1024])
@pytest.mark.parametrize("impl", ["eager", "compiled", "ours"])
def test_reg(record, impl, n):
    step = make_step(impl, n, False)
    want = make_step("eager", n, False)()
    for a, b in zip(step(), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    record(f"latency reg fwd+bwd darts-cifar {shape(n)}", impl, step)
