"""The hypernetwork, S parsing and validation, and deriving architectures for any S."""
import pytest
import torch

from dartscc_fast.search.hypernet import HYPERNETS, PROFILES, build_hypernet, format_S, parse_S, sample_S, simplex_grid
from dartscc_fast.space import derive_genotype, get_space

SPACE = get_space("fmnist-paper")


def test_parse_named_components_in_any_order():
    a = parse_S("conv=0.15,pool=0.7,identity=0.15")
    assert torch.allclose(a, torch.tensor([0.7, 0.15, 0.15]))
    assert torch.allclose(parse_S({"pool": 0.2, "identity": 0.3, "conv": 0.5}), torch.tensor([0.2, 0.3, 0.5]))
    assert torch.allclose(parse_S("B"), torch.tensor([0.15, 0.15, 0.70]))
    assert torch.allclose(parse_S("c"), torch.tensor([0.70, 0.15, 0.15]))
    # the slides' 0.33 each is accepted and renormalised
    assert float(parse_S("pool=0.33,identity=0.33,conv=0.33").sum()) == pytest.approx(1.0)
    assert parse_S(format_S(parse_S("B"))).tolist() == pytest.approx(parse_S("B").tolist())


@pytest.mark.parametrize("bad, words", [
    ("pool=0.7,identity=0.3", "missing"),
    ("pool=0.5,identity=0.2,cnv=0.3", "unknown"),
    ("pool=0.5,identity=0.5,conv=0.5", "simplex"),
    ("pool=1.2,identity=-0.2,conv=0.0", ">= 0"),
    ("pool=0.5,pool=0.5,conv=0", "twice"),
    ("pool=a,identity=0.5,conv=0.5", "not a number"),
    ("pool 0.5", "name=value"),
    ([0.5, 0.5], "3 components"),
    ([0.5, 0.5, 0.0, 0.0], "3 components"),
    ([float("nan"), 0.5, 0.5], "finite"),
    ("", "empty"),
])
def test_bad_S_is_a_clear_error(bad, words):
    with pytest.raises(ValueError, match=words):
        parse_S(bad)


def test_dirichlet_sampling_is_seeded_and_on_the_simplex():
    a = sample_S(3, 100, torch.Generator().manual_seed(1))
    b = sample_S(3, 100, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a >= 0).all() and torch.allclose(a.sum(-1), torch.ones(100))
    # Dirichlet(1): uniform on the simplex, each component's mean 1/3
    big = sample_S(3, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(big.mean(0), torch.full((3,), 1 / 3), atol=0.02)


def test_simplex_grid():
    g = simplex_grid(4)
    assert g.shape == (15, 3)
    assert torch.allclose(g.sum(-1), torch.ones(15))
    assert len({tuple(r.tolist()) for r in g}) == 15


@pytest.mark.parametrize("kind", sorted(HYPERNETS))
def test_hypernet_shapes_and_determinism(kind):
    def make():
        torch.manual_seed(3)
        return build_hypernet(kind, SPACE.num_edges, SPACE.k)
    h1, h2 = make(), make()
    S = parse_S("A")
    an, ar = h1(S)
    assert an.shape == ar.shape == (SPACE.num_edges, SPACE.k)
    assert torch.equal(an, h2(S)[0]) and torch.equal(ar, h2(S)[1])
    Sn = sample_S(3, 5, torch.Generator().manual_seed(0))
    bn, br = h1(Sn)
    assert bn.shape == (5, SPACE.num_edges, SPACE.k)
    # per-sample rows equal the single-S result
    assert torch.allclose(bn[2], h1(Sn[2])[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"S must have shape \[3\]"):
        h1(torch.ones(4) / 4)


@pytest.mark.parametrize("kind", ["linear", "pwl", "mlp"])
def test_hypernet_depends_on_S_and_gets_gradients(kind):
    torch.manual_seed(0)
    h = build_hypernet(kind, SPACE.num_edges, SPACE.k)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_()
    a1, _ = h(parse_S("B"))
    a2, _ = h(parse_S("C"))
    assert not torch.allclose(a1, a2)
    (a1.sum() + a2.square().sum()).backward()
    assert all(p.grad is not None for p in h.parameters())


def test_linear_hypernet_is_linear():
    torch.manual_seed(0)
    h = build_hypernet("linear", SPACE.num_edges, SPACE.k)
    with torch.no_grad():
        h.A.normal_()
    S1, S2 = parse_S("B"), parse_S("C")
    mid = h(0.5 * S1 + 0.5 * S2)[0]
    assert torch.allclose(mid, 0.5 * h(S1)[0] + 0.5 * h(S2)[0], atol=1e-5)


def test_unknown_hypernet():
    with pytest.raises(ValueError, match="unknown hypernetwork"):
        build_hypernet("rbf", 14, 3)


@pytest.mark.parametrize("kind", ["linear", "pwl", "mlp"])
@pytest.mark.parametrize("top2", [False, True])
def test_any_S_gives_a_valid_architecture(kind, top2):
    torch.manual_seed(1)
    h = build_hypernet(kind, SPACE.num_edges, SPACE.k)
    with torch.no_grad():
        for p in h.parameters():
            p.normal_()
    Ss = torch.cat([simplex_grid(5), sample_S(3, 20, torch.Generator().manual_seed(2))])
    for S in Ss:
        an, ar = h(S)
        g = derive_genotype(SPACE, an, ar, top2=top2)
        g2 = derive_genotype(SPACE, *h(S), top2=top2)
        assert g.to_json() == g2.to_json()  # deterministic
        for nodes in (g.normal, g.reduce):
            assert len(nodes) == SPACE.steps
            for i, node in enumerate(nodes):
                assert len(node) == (2 if top2 else i + 2)
                for prim, src in node:
                    assert prim in SPACE.primitives and 0 <= src < i + 2
        counts = g.op_counts(SPACE)
        assert sum(counts.values()) == (2 * SPACE.steps if top2 else SPACE.num_edges) * SPACE.layers


def test_profiles_named():
    assert set(PROFILES) == {"A", "B", "C"}
    for p in PROFILES.values():
        assert set(p) == {"pool", "identity", "conv"}


@pytest.mark.parametrize("kind", ["linear", "pwl", "mlp"])
def test_latency_prior_start(kind):
    """Initialised from L, alpha(S) - A0 is the latency term's preference -scale * S_type(m) * L[e, m]."""
    torch.manual_seed(0)
    h = build_hypernet(kind, SPACE.num_edges, SPACE.k)
    L = torch.rand(2 * SPACE.num_edges, SPACE.k)
    types = SPACE.type_index().tolist()
    h.init_latency_prior(L, types, 3.0)
    for S in [parse_S("B"), parse_S("pool=0.1,identity=0.6,conv=0.3")]:
        an, ar = h(S)
        want = -3.0 * L * S[torch.tensor(types)]
        got = torch.cat([an - h.A0[0], ar - h.A0[1]])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
