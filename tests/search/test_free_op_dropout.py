"""The dropout of drawn parameter-free candidates (P-DARTS's guard): which ops, the scales, the schedule,
the search with it (deterministic, resumable), and what saved searches and reports read back as."""
import dataclasses
import math

import pytest
import torch

from dartscc_fast.evaluation.demo import DemoConfig
from dartscc_fast.evaluation.evaluate import baseline_config
from dartscc_fast.evaluation.reproduce import _same_protocol
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.search.model import edge_scale, free_ops
from dartscc_fast.search.schedules import free_op_dropout_at
from dartscc_fast.space import get_space

TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=2, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=3, progress=False, per_sample=True)


def test_free_ops_are_the_pools_and_the_stride_1_identities():
    space = get_space("fmnist-paper")
    free = free_ops(space)
    strides = space.row_strides()
    assert free.shape == (2 * space.num_edges, space.k)
    for r, stride in enumerate(strides):
        for m, name in enumerate(space.primitives):
            want = "pool" in name or (name == "skip_connect" and stride == 1)
            assert bool(free[r, m]) == want, (r, name, stride)
    # the reduction cell's stride-2 rows: an identity there is a FactorizedReduce, with weights
    assert 2 in strides and not free[[r for r, s in enumerate(strides) if s == 2]][:, 2].any()


def test_edge_scale_drops_or_rescales_only_the_drawn_free_op():
    free = torch.tensor([[False, True, True], [False, True, False], [False, False, False]])
    gamma = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # drawn: free, conv, not free
    u = torch.tensor([0.1, 0.1, 0.1])
    torch.testing.assert_close(edge_scale(gamma, free, u, 0.5), torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(edge_scale(gamma, free, torch.tensor([0.9, 0.0, 0.0]), 0.5),
                               torch.tensor([2.0, 1.0, 1.0]))
    # per sample: [N, 2E, k] weights, [N, 2E] draws
    g = torch.stack([gamma, gamma])
    torch.testing.assert_close(edge_scale(g, free, torch.tensor([[0.1, 0, 0], [0.9, 0, 0]]), 0.25),
                               torch.tensor([[0.0, 1.0, 1.0], [4 / 3, 1.0, 1.0]]))


def test_the_rate_decays_as_p_darts_decays_it():
    cfg = SearchConfig(epochs=5, warmup_epochs=2, free_op_dropout=0.4)
    got = [free_op_dropout_at(cfg, e) for e in range(5)]
    want = [0.4 * 4 / 5, 0.4 * 3 / 5, 0.4, 0.4 * math.exp(-0.2), 0.4 * math.exp(-0.4)]
    assert got == pytest.approx(want)
    assert free_op_dropout_at(SearchConfig(), 3) == 0.0


def test_bad_rates_and_the_soft_relaxation_are_refused():
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="free_op_dropout"):
            SearchConfig(free_op_dropout=p)
    with pytest.raises(ValueError, match="hard"):
        SearchConfig(free_op_dropout=0.3, hard=False)


def test_the_network_scales_each_edge_of_each_sample():
    space = get_space("fmnist-paper", C=4)
    net = space.supernet().eval()  # eval: BatchNorm does not mix the samples
    x = torch.randn(2, 1, 28, 28)
    E, k = space.num_edges, space.k
    w = torch.nn.functional.one_hot(torch.randint(0, k, (2, 2 * E)), k).float()
    plain = net(x, w[:, :E], w[:, E:], hard=True)
    ones = net(x, w[:, :E], w[:, E:], hard=True, edge_scale=torch.ones(2, 2 * E))
    torch.testing.assert_close(ones, plain, rtol=0, atol=0)
    scale = torch.ones(2, 2 * E)
    scale[0, 3] = 0.0  # one normal edge of sample 0 dropped
    out = net(x, w[:, :E], w[:, E:], hard=True, edge_scale=scale)
    torch.testing.assert_close(out[1], plain[1])
    assert not torch.allclose(out[0], plain[0])


def test_a_search_with_it_is_deterministic_resumes_bitwise_and_differs_from_one_without(tmp_path):
    cfg = dataclasses.replace(TINY, free_op_dropout=0.5, out_dir=str(tmp_path / "a"))
    a = load_search(run_search(cfg))
    again = load_search(run_search(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))))
    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "c"))
    run_search(part, stop_after_epochs=1)
    resumed = load_search(run_search(part, resume=True))
    off = load_search(run_search(dataclasses.replace(cfg, free_op_dropout=0.0, out_dir=str(tmp_path / "d"))))
    for other in (again, resumed):
        torch.testing.assert_close(other.alphas("B", 2.0)[0], a.alphas("B", 2.0)[0], rtol=0, atol=0)
    assert not torch.equal(off.alphas("B", 2.0)[0], a.alphas("B", 2.0)[0])
    assert a.config.free_op_dropout == 0.5


def test_saved_searches_and_reports_from_before_it_read_back_as_without():
    assert SearchConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "free_op_dropout"}) \
        .free_op_dropout == 0.0
    on = dataclasses.replace(TINY, free_op_dropout=0.3)
    assert SearchConfig.from_dict(on.to_dict()) == on
    # the baselines run as their authors run them
    for kind in ("darts", "fbnet"):
        assert baseline_config(on, kind, kappa=1.0).free_op_dropout == 0.0
    cfg = DemoConfig(out_dir="x")
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "free_op_dropout"}
    assert _same_protocol(old, cfg) and not _same_protocol(old, dataclasses.replace(cfg, free_op_dropout=0.3))
    assert _same_protocol(dataclasses.asdict(dataclasses.replace(cfg, free_op_dropout=0.3)),
                          dataclasses.replace(cfg, free_op_dropout=0.3))
