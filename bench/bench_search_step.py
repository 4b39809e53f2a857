"""One search training step of the `fmnist-paper` preset at batch 64: the package against the references.

The step: S ~ Dirichlet(1), alpha = H(S), Gumbel-Softmax, the supernet forward
and backward, CE + kappa * Lat_S, Adam on the supernet and the hypernetwork.

- "eager": what a user would write: quark0/darts MixedOp (reference.MixedOp),
  ``torch.nn.functional.gumbel_softmax``, the pure-PyTorch latency regulariser;
- "ours": the fused MixedOp, the package's gumbel_softmax and latency_reg;
- in the hard group, "eager-soft": the reference's soft step, what a quark0/darts
  user runs (it has no hard path), against which the 4x goal is read.

Soft (every candidate runs) and hard (only the drawn candidate runs: GDAS).
Goal: 2x soft, 4x hard. Run: pytest bench/bench_search_step.py -q
(DARTSCC_BENCH_THREADS=2 on the 2-core machine). The interleaved test runs the
implementations in turn, round after round, and gives per-round ratios: on a
shared machine whose load drifts, those are the figures to read.
"""
import pytest
import torch
import torch.nn.functional as F

from dartscc_fast import ops, reference
from dartscc_fast.latency import latency_reg, normalise, simulate_table
from dartscc_fast.search.hypernet import build_hypernet, sample_S
from dartscc_fast.space import get_space

N = 64


def make_step(impl: str, hard: bool, device: str = "cpu", n: int = N):
    """One search step of ``impl`` at batch n on device (bench/gpu_check.py runs it on a GPU)."""
    if impl == "eager-soft":  # what quark0/darts runs: every candidate, whatever the sample
        impl, hard = "eager", False
    space = get_space("fmnist-paper")
    torch.manual_seed(0)
    net = space.supernet(fast=False)
    if impl == "ours":
        fast = space.supernet(fast=True)
        fast.load_state_dict(net.state_dict())
        net = fast
    net.to(device)
    hyper = build_hypernet("linear", space.num_edges, space.k).to(device)
    L = normalise(simulate_table(space, "sim:mobile-cpu").supernet_latency(space)).float().to(device)
    types = space.type_index().tolist()
    opt = torch.optim.Adam(list(net.parameters()) + list(hyper.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)

    def gumbel(a):
        if impl == "ours":
            return ops.gumbel_softmax(a, 0.5, hard, generator=g)
        return F.gumbel_softmax(a, tau=0.5, hard=hard)

    reg = latency_reg if impl == "ours" else reference.latency_reg

    def step():
        S = sample_S(3, None, g).to(device)
        an, ar = hyper(S)
        gn, gr = gumbel(an), gumbel(ar)
        loss = F.cross_entropy(net(x, gn, gr, hard=hard), y) + 4.0 * reg(torch.cat([gn, gr]), L, S, types)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@pytest.mark.parametrize("impl", ["eager", "eager-soft", "ours"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_search_step(record, impl, hard):
    if impl == "eager-soft" and not hard:
        pytest.skip("the soft group's eager is already soft")
    # a hard step's time depends on the ops it draws (about +-15 %): more rounds, more draws
    record(f"search step fmnist-paper batch {N} {'hard' if hard else 'soft'}", impl, make_step(impl, hard),
           rounds=12 if hard else 5)


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_search_step_interleaved(interleave, hard):
    # the same comparison, each round running every implementation once (the ratios the goals are read on)
    impls = ["eager", "eager-soft", "ours"] if hard else ["eager", "ours"]
    interleave(f"search step fmnist-paper batch {N} {'hard' if hard else 'soft'} (interleaved)",
               {impl: make_step(impl, hard) for impl in impls}, rounds=10 if hard else 6)
