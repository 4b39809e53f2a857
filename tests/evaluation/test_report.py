"""Which of the family's architectures the report retrains for the front (report.front_picks)."""
from types import SimpleNamespace

import pytest

from dartscc_fast.evaluation import report


class _Genotype(SimpleNamespace):
    def to_json(self) -> str:
        return self.name


def _family(*points):
    """Derived-like architectures from (name, predicted ms, validation accuracy with inherited weights)."""
    return [SimpleNamespace(genotype=_Genotype(name=n), predicted_ms=ms, val=acc) for n, ms, acc in points]


@pytest.fixture
def val_acc(monkeypatch):
    seen = []

    def inherited(supernet, space, genotypes, loader):
        assert loader == "val", "the picks must never look at the test images"
        seen.extend(g.name for g in genotypes)
        return [next(d.val for d in FAMILY if d.genotype.name == g.name) for g in genotypes]

    monkeypatch.setattr(report, "inherited_accuracies", inherited)
    return seen


FAMILY = _family(("a", 28.0, 0.70), ("b", 30.5, 0.76), ("c", 31.0, 0.74), ("d", 40.0, 0.80), ("e", 45.0, 0.79))


def test_one_pick_per_budget_by_validation_accuracy(val_acc):
    picks = report.front_picks(None, None, FAMILY, [("fbnet 1", 31.0), ("fbnet 2", 29.0), ("darts", 60.0)],
                               "val", 3)
    # cheapest budget first: 29 ms holds only a; 31 ms (+2 %) holds a, b, c, of which b is best; 60 ms holds all
    assert picks == {"a": "budget of fbnet 2", "b": "budget of fbnet 1", "d": "budget of darts"}
    assert len(set(val_acc)) == 5 and len(val_acc) == 5  # each architecture evaluated once


def test_then_the_dearest_within_each_budget(val_acc):
    budgets = [("fbnet 1", 31.0), ("fbnet 2", 29.0), ("darts", 60.0)]
    picks = report.front_picks(None, None, FAMILY, budgets, "val", 5)
    # after the three inherited picks, the budget-filling ones, dearest budget first: e for darts (60 ms), then
    # c for fbnet 1 (31 ms holds a, b, c); fbnet 2's dearest is a, already picked
    assert picks == {"a": "budget of fbnet 2", "b": "budget of fbnet 1", "d": "budget of darts",
                     "e": "fills the budget of darts", "c": "fills the budget of fbnet 1"}
    assert list(report.front_picks(None, None, FAMILY, budgets, "val", 4)) == ["a", "b", "d", "e"]


def test_fills_with_the_spread_and_skips_what_is_retrained_anyway(val_acc):
    picks = report.front_picks(None, None, FAMILY, [("fbnet", 31.0)], "val", 3, already={"b"})
    # b (a profile's architecture) takes no place: c fills the budget, the spread gives the cheapest and dearest
    assert picks == {"b": "budget of fbnet", "c": "fills the budget of fbnet", "a": "spread over latency",
                     "e": "spread over latency"}


def test_budget_below_every_architecture_and_nothing_to_retrain(val_acc):
    assert report.front_picks(None, None, FAMILY, [("fbnet", 10.0)], "val", 1) == {"a": "spread over latency"}
    assert report.front_picks(None, None, FAMILY, [("fbnet", 31.0)], "val", 0) == {}
    assert val_acc == []


def test_front_comparison_tells_a_shortfall_within_noise_from_a_loss():
    def row(label, ms, acc, retrained=True):
        return {"label": label, "predicted_ms": ms, "test_acc": acc, **({"retrain": {}} if retrained else {})}

    rep = {"split": {"test": 2000}, "searches": {"hypernet": 1, "fbnet": 3},
           "profiles": [row("A", 30.0, 0.790), row("B", 20.0, 0.700)],
           "grid": [row("g", 40.0, 0.900, retrained=False)],  # inherited accuracy only: never on the front
           "baselines": {"darts": [], "fbnet": [row("k1", 30.5, 0.780), row("k2", 31.0, 0.800),
                                                row("k3", 32.0, 0.850), row("k4", 19.0, 0.5)]}}
    fr = report.front_comparison(rep)
    got = {r["baseline"]: (r["family_acc"], r["family_at_least_as_good"], r.get("within_noise")) for r in fr["rows"]}
    # 2 SE of the difference at 79-80 % on 2,000 images is about 2.5 points
    assert got == {"k1": (0.790, True, True), "k2": (0.790, False, True), "k3": (0.790, False, False),
                   "k4": (None, False, None)}
    assert (fr["matched"], fr["within_noise"], fr["of"]) == (1, 2, 4)
    assert {r["picked_by"] for r in fr["rows"]} == {"test_acc"}  # no validation accuracy to pick by


def test_front_comparison_picks_on_validation_accuracy_after_retraining():
    def row(label, ms, acc, val):
        return {"label": label, "predicted_ms": ms, "test_acc": acc, "retrain": {"val_acc": val}}

    # 2 SE of a difference at 80-84 % on 600 validation images is about 4.4 points
    rep = {"split": {"test": 2000, "val": 600}, "searches": {"hypernet": 1, "darts": 1}, "grid": [],
           "profiles": [row("A", 30.0, 0.90, 0.80), row("B", 40.0, 0.85, 0.84), row("C", 41.0, 0.86, 0.70)],
           "baselines": {"fbnet": [], "darts": [row("darts", 45.0, 0.86, 0.85)]}}
    r = report.front_comparison(rep)["rows"][0]
    # C, the dearest, is 14 points behind on validation: out. A and B are level; the dearer B is picked,
    # and A's better test accuracy is never looked at
    assert (r["family_acc"], r["family_latency"], r["candidates"]) == (0.85, 40.0, 3)
    assert r["picked_by"] == "val_acc, dearest within 2 SE"
    assert not r["family_at_least_as_good"] and r["within_noise"]


def test_dearest_within_noise():
    from dartscc_fast.evaluation.evaluate import dearest_within_noise, difference_se
    assert difference_se(0.8, 0.8, 100) == pytest.approx(0.0566, abs=1e-4)
    cands = [("cheap", 10.0, 0.86), ("mid", 20.0, 0.84), ("dear", 30.0, 0.70)]

    def pick(n_val, cs=cands):
        return dearest_within_noise(cs, lambda c: c[2], lambda c: c[1], n_val)[0]

    assert pick(600) == "mid"          # 2 points behind the best is level on 600 images, 16 is not
    assert pick(100_000) == "cheap"    # on many images 2 points is a real difference
    assert pick(10) == "dear"          # on 10 images nothing is told apart
    assert pick(600, [("x", 10.0, 0.8), ("y", 10.0, 0.81)]) == "y"  # equal latency: the better validation
    with pytest.raises(ValueError, match="validation images"):
        pick(0)
    with pytest.raises(ValueError, match="no candidates"):
        pick(600, [])


def _ops(cell):
    return [op for node in cell for op, _ in node]


def test_random_genotype_draws_each_edge_from_its_mix():
    import torch

    from dartscc_fast.space import get_space, random_genotype
    space = get_space("fmnist-paper")
    E, k = space.num_edges, space.k
    gen = torch.Generator().manual_seed(0)
    # one primitive only: every edge takes it, in both cell types
    for m, name in enumerate(space.primitives):
        g = random_genotype(space, gen, op_probs=torch.eye(k)[m])
        assert set(_ops(g.normal) + _ops(g.reduce)) == {name}
    # per cell type and edge: normal edges all pooling, reduction edges all convolution
    probs = torch.zeros(2, E, k)
    probs[0, :, space.primitives.index("max_pool_3x3")] = 1
    probs[1, :, space.primitives.index("sep_conv_3x3")] = 1
    g = random_genotype(space, gen, op_probs=probs)
    assert set(_ops(g.normal)) == {"max_pool_3x3"} and set(_ops(g.reduce)) == {"sep_conv_3x3"}
    # frequencies follow the weights (2000 edges: 4 standard errors about 0.04)
    w = torch.tensor([1.0, 3.0, 0.0])
    ops = [op for _ in range(2000 // (2 * E) + 1) for g in [random_genotype(space, gen, op_probs=w)]
           for op in _ops(g.normal) + _ops(g.reduce)]
    freq = torch.tensor([ops.count(p) / len(ops) for p in space.primitives])
    torch.testing.assert_close(freq, w / w.sum(), atol=0.04, rtol=0)
    for bad in (torch.ones(k + 1), -torch.ones(k), torch.zeros(k)):
        with pytest.raises(ValueError, match="op_probs"):
            random_genotype(space, gen, op_probs=bad)


def test_random_baselines_match_the_profiles_latency():
    """Random architectures are matched to A, B and C even at the cheap corner (pooling at stride 2,
    identity elsewhere), which uniformly random architectures never reach."""
    import torch

    from dartscc_fast.evaluation.evaluate import random_matched
    from dartscc_fast.latency import simulate_table
    from dartscc_fast.space import Genotype, get_space, mixed_random_genotype, random_genotype
    space = get_space("fmnist-paper")
    table = simulate_table(space, "sim:mobile-cpu", batch=64)
    cheap = Genotype(**{c: [[("skip_connect" if src >= 2 or c == "normal" else "max_pool_3x3", src)
                             for src in range(i + 2)] for i in range(space.steps)] for c in ("normal", "reduce")},
                     normal_concat=list(range(2, space.steps + 2)), reduce_concat=list(range(2, space.steps + 2)))
    dear = random_genotype(space, op_probs=torch.tensor([1.0, 0.0, 0.0]))   # all sep_conv_3x3
    targets = [float(table.predict(space, g)) for g in (cheap, dear)]
    uniform = [float(table.predict(space, random_genotype(space, torch.Generator().manual_seed(i))))
               for i in range(300)]
    assert min(uniform) > targets[0] * 1.05 and max(uniform) < targets[1] * 0.95
    gen = torch.Generator().manual_seed(0)
    mixed = [float(table.predict(space, mixed_random_genotype(space, gen))) for _ in range(300)]
    assert min(mixed) < min(uniform) and max(mixed) > max(uniform)   # each its own mix: a wider range
    picks = random_matched(space, table, targets, seed=0)
    for (g, pred), t in zip(picks, targets):
        assert pred == pytest.approx(float(table.predict(space, g))) and pred == pytest.approx(t, rel=0.05)
    assert picks[0][0].to_json() != picks[1][0].to_json()
    assert random_matched(space, table, targets, seed=0)[0][0].to_json() == picks[0][0].to_json()
    # the architectures compared with are never picked: here the cheap corner itself is among the draws
    drawn = random_matched(space, table, [targets[0]], candidates=2000, seed=0)[0][0]
    assert drawn.to_json() == cheap.to_json()
    assert random_matched(space, table, [targets[0]], candidates=2000, seed=0,
                          exclude=[cheap.to_json()])[0][0].to_json() != cheap.to_json()


def _profile(label, pool, identity, conv, params, predicted, measured=None, acc=None):
    return {"label": label, "op_counts": {"pool": pool, "identity": identity, "conv": conv}, "params": params,
            "predicted_ms": predicted, "measured_ms": measured, "test_acc": acc}


def _abc(c_pools: int):
    """Profiles A, B, C of 42 edges each: B has 5 convolutions (the fewest; A 8), C keeps ``c_pools`` pools."""
    return [_profile("A", 14, 20, 8, 30_000, 40.0, 41.0, 0.84), _profile("B", 17, 20, 5, 20_000, 35.0, 36.0, 0.83),
            _profile("C", c_pools, 24 - c_pools, 18, 90_000, 60.0, 59.0, 0.85)]


def test_check_claims_reads_each_part_as_worded():
    # B has 5 of 42 convolutions: the fewest (A 8), but more than a tenth; C keeps 2 pools: almost none, not none
    rep = {"profiles": _abc(c_pools=2)}
    c = report.check_claims(rep)
    assert c["B_fewest_conv"] and not c["B_almost_no_conv"]
    assert c["C_almost_no_pool"] and not c["C_no_pool"]
    assert c["B_fewest_params"] and c["C_most_params"] and c["C_best_acc"]
    assert c["predicted_order_B<A<C"] and c["measured_order_B<A<C"]
    rep["profiles"][1]["measured_ms"] = 42.0  # B timed dearer than A
    assert not report.check_claims(rep)["measured_order_B<A<C"]
    rep["profiles"][1]["measured_ms"] = None  # unmeasured: that part is not checked at all
    assert "measured_order_B<A<C" not in report.check_claims(rep)
    assert set(report.CLAIM_PARTS) <= set(c)


def test_the_whole_claim_counts_seeds_where_every_worded_part_holds():
    from dartscc_fast.evaluation.reproduce import aggregate, results_markdown
    seeds = [{"profiles": _abc(c_pools=0), "claims": {}, "baselines": {}},
             {"profiles": _abc(c_pools=1), "claims": {"C_no_pool": True}, "baselines": {}}]  # a stale saved verdict
    res = aggregate(seeds)
    assert res["claim_whole"] == 1 and res["claims"]["C_no_pool"] == 1 and res["claims"]["C_almost_no_pool"] == 2
    assert "| the whole claim (B_fewest_conv, " in results_markdown({**res, "kappa": 2.0, "at_kappa": {}})
    # a seed that was not timed (--no-measure) counts without its measured order, and the row says so
    untimed = _abc(c_pools=0)
    for p in untimed:
        p["measured_ms"] = None
    res = aggregate(seeds + [{"profiles": untimed, "claims": {}, "baselines": {}}])
    assert res["claim_whole"] == 2 and res["claim_whole_unscored"] == {"measured_order_B<A<C": 1}
    assert "measured_order_B<A<C not scored in 1 (left out there) |" in results_markdown(
        {**res, "kappa": 2.0, "at_kappa": {}})
