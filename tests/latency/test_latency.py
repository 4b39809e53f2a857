"""Latency tables: keys, the file (round trip, corrupt and mismatched files), merging, the compiled
lookup against a Python dict, normalisation, the roofline presets, the microbenchmark and the CLI."""
import copy
import json
import math
import os
import random

import pytest
import torch

from dartscc_fast import reference
from dartscc_fast.cli import main
from dartscc_fast.latency import (
    STRIDE_BALANCE,
    BaseConfig,
    LatencyTable,
    LatencyTableError,
    OpConfig,
    edge_configs,
    normalise,
    profile_space,
    reference_latency,
    roofline,
    simulate_table,
    space_configs,
    time_genotype,
)
from dartscc_fast.nn.primitives import OP_TYPES
from dartscc_fast.space import get_space, random_genotype

FMNIST = get_space("fmnist-paper")
DARTS = get_space("darts-cifar")
TINY = get_space("fmnist-paper", C=4, input_size=8)


def sample_table(space=FMNIST, batch=64, device="cpu", seed=0):
    rng = random.Random(seed)
    t = LatencyTable(meta={"device": device, "device_name": "test", "threads": 2, "batch": batch,
                           "dtype": "float32", "spaces": [space.name]})
    for c in space_configs(space, batch, "float32", device):
        t.add(c, rng.uniform(0.01, 5.0), rng.uniform(0, 0.1), rng.randint(1, 99))
    t.add(BaseConfig.of(space, batch, "float32", device), 7.5, 0.1, 10)
    return t


# ------------------------------------------------------------------------------ keys
def test_key_round_trip():
    c = OpConfig("sep_conv_3x3", 16, 16, 28, 28, 1, 64, torch.float32, "cpu")
    assert c.key() == "sep_conv_3x3:cin16:cout16:h28:w28:s1:n64:float32:cpu"
    assert OpConfig.parse(c.key()) == c
    s = OpConfig("max_pool_3x3", 32, 32, 28, 28, 2, 8, "float16", "sim:mobile-cpu")
    assert s.key().endswith(":float16:sim-mobile-cpu") and OpConfig.parse(s.key()) == s
    b = BaseConfig.of(FMNIST, 64)
    assert b.key() == "base:cin1-c16-l3-st4-m4-sm3-hw28-cls10:all:n64:float32:cpu"
    assert BaseConfig.parse(b.key()) == b
    b2 = BaseConfig.of(FMNIST, 8, inputs="top2")
    assert BaseConfig.parse(b2.key()) == b2 and ":top2:" in b2.key()


@pytest.mark.parametrize("key", ["sep_conv_3x3:cin16", "bogus_op:cin1:cout1:h1:w1:s1:n1:float32:cpu",
                                 "sep_conv_3x3:cin16:cout16:h28:w28:s1:n64:int8:cpu"])
def test_bad_keys(key):
    with pytest.raises(ValueError):
        OpConfig.parse(key)


def test_space_configs():
    cfgs = space_configs(FMNIST, 64)
    # 5 shapes (C16 28x28 s1; C32 28 s2, 14 s1; C64 14 s2, 7 s1) x 3 primitives
    assert len(cfgs) == 15 and len({c.key() for c in cfgs}) == 15
    assert len(space_configs(DARTS, 64)) == 5 * 7  # 'none' is never stored


# ------------------------------------------------------------------------------ file
def test_file_round_trip(tmp_path):
    t = sample_table()
    p = tmp_path / "t.json"
    t.save(p)
    u = LatencyTable.load(p)
    assert u.entries == t.entries and u.meta == t.meta and u.source == str(p)
    d = json.loads(p.read_text())
    assert d["schema"] == "dartscc_fast.latency_table" and d["version"] == 1 and d["unit"] == "ms"


def _write(tmp_path, obj, text=None):
    p = tmp_path / "bad.json"
    p.write_text(text if text is not None else json.dumps(obj))
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema="something"), "not a dartscc_fast latency table"),
    (lambda d: d.update(version=2), "version 2 is newer"),
    (lambda d: d.update(version="1"), "'version' must be an integer"),
    (lambda d: d.update(unit="us"), "unit must be 'ms'"),
    (lambda d: d.update(entries=[]), "'entries' must be an object"),
    (lambda d: d.update(meta=3), "'meta' must be an object"),
    (lambda d: d["entries"].update({"nonsense": {"median": 1.0}}), "bad key"),
    (lambda d: d["entries"].update({next(iter(d["entries"])): {"iqr": 1.0}}), "has no 'median'"),
    (lambda d: d["entries"].update({next(iter(d["entries"])): {"median": -1.0}}), "finite number >= 0"),
    (lambda d: d["entries"].update({next(iter(d["entries"])): {"median": float("nan")}}), "finite number"),
    (lambda d: d["entries"].update({next(iter(d["entries"])): {"median": 1.0, "runs": 1.5}}), "'runs'"),
])
def test_corrupt_tables_are_rejected(tmp_path, mutate, match):
    d = sample_table().to_dict()
    mutate(d)
    p = _write(tmp_path, d)
    with pytest.raises(LatencyTableError, match=match) as e:
        LatencyTable.load(p)
    assert str(p) in str(e.value)


def test_unreadable_files(tmp_path):
    p = _write(tmp_path, None, text='{"schema": "dartscc_fast.latency_table", "version": 1,')
    with pytest.raises(LatencyTableError, match="corrupt JSON") as e:
        LatencyTable.load(p)
    assert str(p) in str(e.value)
    with pytest.raises(LatencyTableError, match="expected a JSON object"):
        LatencyTable.load(_write(tmp_path, [1, 2]))
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        LatencyTable.load(tmp_path / "missing.json")


def test_mismatched_tables(tmp_path):
    p = tmp_path / "t.json"
    sample_table().save(p)
    with pytest.raises(LatencyTableError, match="made for device 'cpu', not 'cuda'"):
        LatencyTable.load(p, device="cuda")
    t = LatencyTable.load(p)
    with pytest.raises(LatencyTableError, match=r"t\.json has no latency for 'sep_conv_3x3:cin16:.*:n32:") as e:
        t.supernet_latency(FMNIST, batch=32)
    assert "batch 64" in str(e.value)  # says what the table does hold
    with pytest.raises(LatencyTableError, match="no latency for"):
        t.supernet_latency(DARTS)


# ------------------------------------------------------------------------------ merge
def test_merge():
    a, b = sample_table(FMNIST), sample_table(DARTS, seed=1)
    m = a.merge(b)
    assert len(m) == len(a) + len(b)
    assert m.meta["spaces"] == ["fmnist-paper", "darts-cifar"]
    m.supernet_latency(FMNIST), m.supernet_latency(DARTS)  # covers both
    c = sample_table(FMNIST, seed=2)
    with pytest.raises(LatencyTableError, match="in both tables with different times"):
        a.merge(c)
    key = a.keys()[0]
    assert a.merge(c, on_conflict="first")[key] == a[key]
    assert a.merge(c, on_conflict="last")[key] == c[key]
    other = sample_table(FMNIST, device="cuda")
    other.meta["device_name"] = "GPU"
    with pytest.raises(LatencyTableError, match="their device differ"):
        a.merge(other)
    assert len(a.merge(other, strict=False)) == 2 * len(a)


# ------------------------------------------------------------------------ the statistic
def _with_mins(t: LatencyTable, frac: float = 0.8) -> LatencyTable:
    for key, e in t.entries.items():
        t.add(key, e["median"], e["iqr"], e["runs"], min=e["median"] * frac)
    return t


def test_statistic_min_reads_every_entrys_fastest_run(tmp_path):
    t = _with_mins(sample_table(FMNIST))
    t.meta["calibration"] = {"scale": 1.0, "offset_ms": 2.0, "networks": 3}
    g = random_genotype(FMNIST, torch.Generator().manual_seed(3))
    fast = t.with_statistic("min")
    assert t.statistic == "median" and fast.statistic == "min" and "statistic" not in t.meta
    assert fast.calibration() == (1.0, 0.0)  # fitted to the medians: dropped, to be refitted
    key = t.keys()[0]
    assert fast[key] == pytest.approx(0.8 * t[key])
    assert fast.base(FMNIST, g) == pytest.approx(0.8 * t.base(FMNIST, g))
    assert fast.predict(FMNIST, g) == pytest.approx(0.8 * (t.predict(FMNIST, g) - 2.0))
    L, L_fast = t.supernet_latency(FMNIST), fast.supernet_latency(FMNIST)
    assert torch.allclose(L_fast, 0.8 * L)
    assert t.with_statistic("median").calibration() == (1.0, 2.0)  # same statistic: calibration kept
    cfgs = [OpConfig.parse(k) for k in t.keys()[:3] if not k.startswith("base:")]
    (est, _), (est_fast, _) = roofline.calibrated_estimates(t, cfgs), roofline.calibrated_estimates(fast, cfgs)
    assert len(est) == 3 and all(est_fast[k] == pytest.approx(0.8 * est[k]) for k in est)  # scaled to the runs read
    p = tmp_path / "fast.json"
    fast.save(p)
    assert LatencyTable.load(p).statistic == "min" and LatencyTable.load(p)[key] == fast[key]


def test_statistic_errors(tmp_path):
    t = sample_table(FMNIST)  # medians only, as simulated tables and old tables are
    with pytest.raises(LatencyTableError, match=r"entries have no 'min'.*profile the table again"):
        t.with_statistic("min")
    with pytest.raises(LatencyTableError, match="'statistic' must be one of median, min"):
        t.with_statistic("mean")
    d = t.to_dict()
    d["meta"]["statistic"] = "min"
    with pytest.raises(LatencyTableError, match="entries have no 'min'") as e:
        LatencyTable.load(_write(tmp_path, d))
    assert "bad.json" in str(e.value)
    fast = _with_mins(sample_table(FMNIST)).with_statistic("min")
    with pytest.raises(LatencyTableError, match="reads 'min', which the entry lacks"):
        fast.add(fast.keys()[0], 1.0)
    with pytest.raises(LatencyTableError, match="entries have no 'min'"):
        fast.merge(sample_table(DARTS, seed=1))
    assert fast.merge(_with_mins(sample_table(DARTS, seed=1))).statistic == "min"
    with pytest.raises(ValueError, match="simulated device .* reads the median only"):
        profile_space(FMNIST, "sim:mobile-cpu", statistic="min")
    with pytest.raises(ValueError, match="statistic must be one of"):
        profile_space(TINY, "cpu", statistic="p10")


# ------------------------------------------------------------------------ lookups
def test_compiled_lookup_equals_dict():
    t = sample_table(DARTS)
    rows = edge_configs(DARTS, 64)
    keys = ["" if c is None else c.key() for row in rows for c in row]
    random.Random(0).shuffle(keys)
    d = {k: e["median"] for k, e in t.entries.items()}
    L = t.lookup(keys, DARTS.k)
    assert L.dtype == torch.float64 and L.shape == (len(rows), DARTS.k)
    assert torch.equal(L, reference.latency_lookup(d, keys, DARTS.k))
    c = t.compiled()
    assert c.size() == len(t) and sorted(c.keys()) == sorted(t.keys())
    assert c.lookup(keys[1]) == d.get(keys[1], 0.0) and c.contains("") and c.lookup("") == 0.0


def test_compiled_table_errors_and_pickle():
    t = torch.classes.dartscc_fast.LatencyTable()
    t.insert("a:b", 1.5)
    with pytest.raises(RuntimeError, match="no latency for configuration 'missing:key'"):
        t.lookup_batch(["a:b", "missing:key"], 2, None)
    with pytest.raises(RuntimeError, match="not a multiple of k=2"):
        t.lookup_batch(["a:b"], 2, None)
    with pytest.raises(RuntimeError, match="must be finite and >= 0"):
        t.insert("x", float("nan"))
    fb = torch.tensor([math.nan, 4.0], dtype=torch.float64)
    assert t.lookup_batch(["a:b", "missing:key"], 2, fb).tolist() == [[1.5, 4.0]]
    assert t.missing(["a:b", "m", "", "m", "n"]) == ["m", "n"]
    u = copy.deepcopy(t)
    assert u.lookup("a:b") == 1.5 and u.size() == 1
    # two steps: hash the keys once, then gather by slot
    t.insert("c:d", 2.5)
    slots = t.resolve(["c:d", "", "a:b", "zz"], True)
    assert slots.tolist() == [1, -1, 0, -2]
    with pytest.raises(RuntimeError, match="no latency for configuration 'zz'"):
        t.resolve(["zz"], False)
    with pytest.raises(RuntimeError, match="no fallback estimate"):
        t.gather(slots, 2, None)
    fb = torch.tensor([math.nan, math.nan, math.nan, 9.0], dtype=torch.float64)
    assert t.gather(slots, 2, fb).tolist() == [[2.5, 0.0], [1.5, 9.0]]
    t.insert("a:b", 3.0)  # a slot keeps its key: resolved slots stay valid
    assert t.gather(slots, 4, fb).tolist() == [[2.5, 0.0, 3.0, 9.0]]


def test_fallback_estimates_and_warns():
    t = sample_table(FMNIST)
    with pytest.raises(LatencyTableError, match="fallback='roofline'"):
        t.supernet_latency(FMNIST, batch=32)
    with pytest.warns(UserWarning, match="lacks 15 configuration"):
        L = t.supernet_latency(FMNIST, batch=32, fallback="roofline")
    assert torch.isfinite(L).all() and (L[:, :2] > 0).all() and (L >= 0).all()  # identity: no kernel
    with pytest.warns(UserWarning, match="the given fallback function"):
        L = t.supernet_latency(FMNIST, batch=32, fallback=lambda c: 1.0)
    # each normal row sums the 1 normal cell's edge, each reduction row the 2 reduction cells'
    assert torch.equal(L, torch.cat([torch.ones(14, 3), torch.full((14, 3), 2.0)]).double())


def test_supernet_latency_cache_follows_the_table():
    t = sample_table(FMNIST)
    L = t.supernet_latency(FMNIST, per="edge")
    key = OpConfig("sep_conv_3x3", 16, 16, 28, 28, 1, 64).key()
    t.add(key, 100.0)
    L2 = t.supernet_latency(FMNIST, per="edge")
    assert (L2[:14, 0] == 100.0).all() and torch.equal(L2[14:], L[14:])


def test_supernet_latency_and_predict():
    t = sample_table(FMNIST)
    per_edge = t.supernet_latency(FMNIST, per="edge")
    per_type = t.supernet_latency(FMNIST)
    assert per_edge.shape == (3 * 14, 3) and per_type.shape == (28, 3)
    torch.testing.assert_close(per_edge.sum(0), per_type.sum(0))
    torch.testing.assert_close(per_type[:14], per_edge[:14])  # cell 0 is the only normal cell
    g = random_genotype(FMNIST, torch.Generator().manual_seed(0))
    # predicted = base + the chosen op of every edge: gather from the per-edge L
    idx = [FMNIST.primitives.index(p) for cell in range(3)
           for node in (g.reduce if FMNIST.is_reduction(cell) else g.normal) for p, _ in node]
    expect = 7.5 + float(per_edge[torch.arange(42), torch.tensor(idx)].sum())
    assert t.predict(FMNIST, g) == pytest.approx(expect)
    assert t.predict(FMNIST, g, include_base=False) == pytest.approx(expect - 7.5)


def test_normalise():
    L = torch.rand(28, 8, dtype=torch.float64)
    ti = DARTS.type_index().tolist()
    assert reference_latency(normalise(L), "uniform").item() == pytest.approx(1.0)
    n = normalise(L, "cheapest", ti)
    assert reference_latency(n, "cheapest", ti).item() == pytest.approx(1.0)
    # the cheapest reference leaves out 'none', which costs 0
    L[:, 0] = 0
    assert reference_latency(L, "cheapest", ti) > 0
    with pytest.raises(ValueError, match="must be one of .*'type-stride'"):
        normalise(L, "median")
    t = sample_table(DARTS)
    raw = t.supernet_latency(DARTS)
    for ref in ("uniform", "cheapest", "type"):
        torch.testing.assert_close(t.supernet_latency(DARTS, normalise_by=ref), normalise(raw, ref, ti))
    torch.testing.assert_close(t.supernet_latency(DARTS, normalise_by="type-stride"),
                               normalise(raw, "type-stride", ti, DARTS.row_strides()))
    per_edge = t.supernet_latency(DARTS, per="edge")
    torch.testing.assert_close(t.supernet_latency(DARTS, per="edge", normalise_by="type-stride"),
                               normalise(per_edge, "type-stride", ti, [e.stride for e in DARTS.edges()]))


def test_normalise_per_type_and_stride():
    """'type-stride': 'type', then on each stride's rows pooling and convolution are drawn towards the same
    total (their mean), each keeping its ratios within those rows; identity and 'none' keep their 'type'
    prices. ``balance`` 1 makes the totals equal, 0 leaves 'type', the default 0.5 halves the log ratio."""
    L = torch.rand(28, 8, dtype=torch.float64) + 0.1
    ti = DARTS.type_index().tolist()
    L[:, ti.index(-1)] = 0
    strides = DARTS.row_strides()
    assert strides.count(2) == 8 and strides[:14] == [1] * 14
    by_type = normalise(L, "type", ti)
    cols = {t: [m for m, u in enumerate(ti) if u == t] for t in set(ti)}
    pool, identity, conv = (cols[OP_TYPES.index(t)] for t in ("pool", "identity", "conv"))
    for balance in (1.0, STRIDE_BALANCE, 0.25, 0.0):
        n = normalise(L, "type-stride", ti, strides, balance)
        for s in (1, 2):
            rows = [r for r, v in enumerate(strides) if v == s]
            tp, tc = (n[rows][:, c].mean(-1).sum() for c in (pool, conv))
            bp, bc = (by_type[rows][:, c].mean(-1).sum() for c in (pool, conv))
            torch.testing.assert_close(tc / tp, (bc / bp) ** (1 - balance))
            torch.testing.assert_close(tp, bp * ((bp + bc) / 2 / bp) ** balance)
            for c in (pool, conv):
                torch.testing.assert_close(n[rows][:, c] / n[rows[0], c[0]], L[rows][:, c] / L[rows[0], c[0]])
        torch.testing.assert_close(n[:, identity + cols[-1]], by_type[:, identity + cols[-1]])
    assert STRIDE_BALANCE == 0.5
    torch.testing.assert_close(normalise(L, "type-stride", ti, strides, 0.0), by_type)
    torch.testing.assert_close(normalise(L, "type-stride", ti, strides), normalise(L, "type-stride", ti, strides, 0.5))
    with pytest.raises(ValueError, match="one stride per row of L"):
        normalise(L, "type-stride", ti)
    with pytest.raises(ValueError, match=r"balance must be in \[0, 1\]"):
        normalise(L, "type-stride", ti, strides, 1.5)
    # the search passes the space's row strides and its balance
    from dartscc_fast.search import SearchConfig, supernet_L
    t = sample_table(DARTS)
    for balance in (0.5, 1.0):
        _, Ln = supernet_L(t, DARTS, SearchConfig(space="darts-cifar", normalise="type-stride",
                                                  stride_balance=balance))
        torch.testing.assert_close(Ln, normalise(t.supernet_latency(DARTS, per="cell_type"), "type-stride", ti,
                                                 strides, balance).float())
    with pytest.raises(ValueError, match="stride_balance must be in"):
        SearchConfig(space="darts-cifar", stride_balance=-0.1)


def test_normalise_per_cell_type():
    """'type-cell': pooling and convolution priced within each cell type apart (each cell type's pool, and conv,
    edges cost 1 / 2 at the uniform mix with balance 0), the stride balance then drawn within each cell type;
    identity keeps its 'type' price. Hand-computed on a tiny table."""
    ti = [2, 0, 1]  # conv, pool, identity (fmnist-paper's order)
    # rows: normal (stride 1, stride 1), reduction (stride 2, stride 1)
    L = torch.tensor([[2.0, 4.0, 0.0], [2.0, 4.0, 0.0], [3.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    strides, cells = [1, 1, 2, 1], [0, 0, 1, 1]
    n = normalise(L, "type-cell", ti, strides, 0.0, cells)
    # normal cell: conv 2 + 2 = 4, pool 4 + 4 = 8; reduction: conv 3 + 1 = 4, pool 1 + 1 = 2; then / 2 cell types
    expect = torch.tensor([[2 / 8, 4 / 16, 0.0], [2 / 8, 4 / 16, 0.0], [3 / 8, 1 / 4, 1.0], [1 / 8, 1 / 4, 0.0]],
                          dtype=torch.float64)
    torch.testing.assert_close(n, expect)
    # balance 1: on each (cell type, stride)'s rows pool and conv get the same total, their mean
    n1 = normalise(L, "type-cell", ti, strides, 1.0, cells)
    for rows in ([0, 1], [2], [3]):
        torch.testing.assert_close(n1[rows, 0].sum(), n1[rows, 1].sum())
        torch.testing.assert_close(n1[rows, 0].sum(), (expect[rows, 0].sum() + expect[rows, 1].sum()) / 2)
    torch.testing.assert_close(n1[:, 2], expect[:, 2])
    # every type's uniform architecture still costs 1
    for balance in (0.0, 0.5):
        m = normalise(L, "type-cell", ti, strides, balance, cells)
        assert float(m[:, 2].sum()) == pytest.approx(1.0)
        if balance == 0.0:
            assert [float(m[:, c].sum()) for c in (0, 1)] == pytest.approx([1.0, 1.0])
    # one cell type: 'type-stride'
    torch.testing.assert_close(normalise(L, "type-cell", ti, strides, 0.5, [0] * 4),
                               normalise(L, "type-stride", ti, strides, 0.5))
    with pytest.raises(ValueError, match="'type-cell' needs one cell type per row of L"):
        normalise(L, "type-cell", ti, strides, 0.5)
    # the search and the table pass the space's cell types
    from dartscc_fast.search import SearchConfig, supernet_L
    t = sample_table(DARTS)
    raw = t.supernet_latency(DARTS, per="cell_type")
    want = normalise(raw, "type-cell", DARTS.type_index().tolist(), DARTS.row_strides(), 0.5, DARTS.row_cells())
    torch.testing.assert_close(supernet_L(t, DARTS, SearchConfig(space="darts-cifar", normalise="type-cell"))[1],
                               want.float())
    torch.testing.assert_close(t.supernet_latency(DARTS, normalise_by="type-cell"), want)
    assert DARTS.row_cells() == [0] * DARTS.num_edges + [1] * DARTS.num_edges


def test_normalise_per_type():
    """'type': every operation type's own uniform architecture costs 1; ratios within a type stay."""
    L = torch.rand(28, 8, dtype=torch.float64) + 0.1
    ti = DARTS.type_index().tolist()
    L[:, ti.index(-1)] = 0                                # 'none' costs nothing
    n = normalise(L, "type", ti)
    for t in set(ti) - {-1}:
        cols = [m for m, u in enumerate(ti) if u == t]
        assert n[:, cols].mean(-1).sum().item() == pytest.approx(1.0)
        torch.testing.assert_close(n[:, cols] / n[0, cols[0]], L[:, cols] / L[0, cols[0]])
    assert n[:, ti.index(-1)].abs().sum() == 0
    # scaling one type's latencies (a device where pooling is 10x dearer) leaves the result unchanged
    pool = [m for m, u in enumerate(ti) if u == 0]
    L2 = L.clone()
    L2[:, pool] *= 10
    torch.testing.assert_close(normalise(L2, "type", ti), n)
    with pytest.raises(ValueError, match="one type per candidate"):
        normalise(L, "type")
    L[:, pool] = 0
    with pytest.raises(ValueError, match="operation type 0"):
        normalise(L, "type", ti)



def test_end_to_end_regulariser():
    """The documented pipeline: table -> L (normal then reduce rows) -> latency_reg with gradients."""
    from dartscc_fast.latency import latency_reg
    t = sample_table(DARTS)
    L = normalise(t.supernet_latency(DARTS), "uniform").float()
    logits = torch.randn(2, 14, DARTS.k, requires_grad=True)
    w = torch.softmax(logits, -1).reshape(28, DARTS.k)
    S = torch.tensor([0.2, 0.3, 0.5])
    lat = latency_reg(w, L, S, DARTS.type_index())
    lat.backward()
    assert lat.item() > 0 and logits.grad is not None and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------- roofline
def test_roofline_presets():
    for name, p in roofline.PRESETS.items():
        assert p.sources and p.peak("float32") > 0 and p.bandwidth > 0
        t = simulate_table([FMNIST, DARTS], "sim:" + name)
        assert t.device == "sim-" + name and t.meta["preset"]["name"] == name
        L = t.supernet_latency(DARTS)
        assert torch.isfinite(L).all() and (L[:, 0] == 0).all()  # 'none'
        c = lambda p, s=1: OpConfig(p, 16, 16, 32, 32, s, 64, "float32", "sim:" + name)  # noqa: E731
        assert t[c("sep_conv_5x5")] > t[c("sep_conv_3x3")] > t[c("max_pool_3x3")] > t[c("skip_connect")] == 0
        assert t[OpConfig("skip_connect", 32, 32, 32, 32, 2, 64, "float32", "sim:" + name)] > 0  # FactorizedReduce
    with pytest.raises(ValueError, match="unknown simulated device"):
        roofline.get_preset("sim:abacus")


# --------------------------------------------------------------------- measurement
@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_profile_tiny_space():
    t = profile_space(TINY, "cpu", batch=2, threads=1, progress=False, max_seconds=0.02, min_runs=3, warmup=1)
    assert len(t) == len(space_configs(TINY, 2)) + 2  # + the two network bases
    for e in t.entries.values():
        assert math.isfinite(e["median"]) and e["median"] > 0 and e["runs"] >= 3
    m = t.meta
    assert m["device"] == "cpu" and m["threads"] == 1 and m["torch"] == torch.__version__ and m["date"]
    assert "perf_counter" in m["method"]
    g = random_genotype(TINY, torch.Generator().manual_seed(0))
    assert t.predict(TINY, g) > t.base(TINY, g) > 0
    tm = time_genotype(TINY, g, batch=2, threads=1, max_seconds=0.02, min_runs=3, warmup=1)
    assert tm.median > 0 and tm.runs >= 3
    assert tm.value("min") == tm.min <= tm.median == tm.value("median")
    fast = t.with_statistic("min")  # a profile records both runs of every entry
    assert all(fast[k] == e["min"] <= e["median"] for k, e in t.entries.items())


def test_time_genotypes_interleaved():
    from dartscc_fast.latency.measure import time_genotypes
    gen = torch.Generator().manual_seed(1)
    gs = [random_genotype(TINY, gen) for _ in range(3)]
    ts = time_genotypes(TINY, gs, batch=2, threads=1, rounds=2, runs=2)
    assert len(ts) == 3 and all(t.runs == 4 and t.median > 0 for t in ts)  # rounds x runs, pooled
    with pytest.raises(ValueError, match="rounds and runs must be >= 1"):
        time_genotypes(TINY, gs, rounds=0)


@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_profile_memory_format(tmp_path):
    from dartscc_fast.latency.measure import build_network, build_op, network_input
    kw = dict(batch=2, threads=1, progress=False, max_seconds=0.01, min_runs=3, warmup=1, include_base=False)
    cl = profile_space(TINY, "cpu", **kw)                       # the CPU default
    nchw = profile_space(TINY, "cpu", memory_format="contiguous", **kw)
    assert cl.meta["memory_format"] == cl.memory_format == "channels_last"
    assert nchw.memory_format == "contiguous"
    assert LatencyTable(meta={"device": "cpu"}).memory_format == "contiguous"  # tables from before the field
    cl.save(tmp_path / "cl.json")
    assert LatencyTable.load(tmp_path / "cl.json").memory_format == "channels_last"
    with pytest.raises(LatencyTableError, match="memory formats"):
        cl.merge(nchw)
    with pytest.raises(ValueError, match="memory_format must be one of"):
        profile_space(TINY, "cpu", memory_format="nhwc", **kw)
    # what is timed runs in that layout, and computes what the contiguous network computes
    cfg = space_configs(TINY, 2)[0]
    assert build_op(cfg, "channels_last")(torch.randn(2, cfg.cin, cfg.h, cfg.w)).dim() == 4
    g = random_genotype(TINY, torch.Generator().manual_seed(0))
    x = network_input(TINY, 2, memory_format="channels_last")
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(build_network(TINY, g, memory_format="channels_last")(x),
                                   build_network(TINY, g)(x.contiguous()), rtol=1e-4, atol=1e-5)


def test_cli(tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["profile", "--device", "sim:edge-gpu", "--space", "fmnist-paper", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["table", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "sep_conv_3x3" in shown and "(network base, all)" in shown and "sim-edge-gpu" in shown
    assert main(["table", "check", str(out), "--space", "fmnist-paper"]) == 0
    capsys.readouterr()
    assert main(["profile", "--device", "sim:edge-gpu", "--space", "fmnist-paper", "--out", str(out), "--quiet",
                 "--calibrate", "3"]) == 2
    assert "simulated device (sim:edge-gpu) cannot time whole networks" in capsys.readouterr().err
    assert main(["table", "calibrate", str(out)]) == 2
    assert "cannot calibrate the simulated device" in capsys.readouterr().err
    assert main(["profile", "--list", "--space", "darts-cifar"]) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 35 + 2 and all(k.endswith(":n64:float32:cpu") for k in listed)
    assert main(["table", "check", str(out), "--space", "darts-cifar"]) == 1
    cpu = tmp_path / "cpu.json"
    assert main(["profile", "--device", "cpu", "--batch", "1", "--threads", "1", "--clock", "thread",
                 "--max-seconds", "0.01", "--out", str(cpu), "--quiet", "--calibrate", "0"]) == 0
    meta = LatencyTable.load(cpu).meta
    assert meta["threads"] == 1 and meta["clock"] == "thread" and "thread_time" in meta["method"]
    with pytest.raises(ValueError, match="clock='thread' measures the calling thread's CPU time: torch computes "
                                         "elsewhere with 2 thread"):
        profile_space(TINY, "cpu", batch=1, threads=2, clock="thread")
    assert main(["table", "merge", str(out), str(cpu), "--out", str(tmp_path / "m.json")]) == 2  # devices differ
    assert main(["table", "merge", str(out), str(cpu), "--out", str(tmp_path / "m.json"), "--force"]) == 0
    assert main(["table", "show", str(tmp_path / "missing.json")]) == 2
    pytest.importorskip("matplotlib")
    assert main(["table", "plot", str(cpu), "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0


def test_base_interpolates_node_sums():
    from dartscc_fast.latency.keys import node_sums
    t = sample_table(FMNIST)
    t.add(BaseConfig.of(FMNIST, 64, inputs="top2"), 5.5)
    assert node_sums(FMNIST) == 3 * 10 and node_sums(FMNIST, inputs="top2") == 3 * 4
    g_all = random_genotype(FMNIST, torch.Generator().manual_seed(0))
    g_top2 = random_genotype(FMNIST, torch.Generator().manual_seed(0), top2=True)
    assert node_sums(FMNIST, g_all) == 30 and node_sums(FMNIST, g_top2) == 12
    assert t.base(FMNIST, g_all) == 7.5 and t.base(FMNIST, g_top2) == 5.5 and t.base(FMNIST) == 7.5
    g_top2.normal[3].append(("skip_connect", 0))  # one more node sum in the one normal cell
    assert t.base(FMNIST, g_top2) == pytest.approx(5.5 + 2.0 / 18)


def test_base_network_is_free_edges():
    from dartscc_fast.latency.measure import FreeOp, build_base_network
    for inputs, n in (("all", 14), ("top2", 8)):
        net = build_base_network(TINY, inputs)
        assert all(isinstance(op, FreeOp) for cell in net.cells for op in cell._ops)
        assert all(len(cell._ops) == n for cell in net.cells)
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cli_predict(tmp_path, capsys):
    out = tmp_path / "sim.json"
    simulate_table(FMNIST, "mobile-cpu").save(out)
    g = random_genotype(FMNIST, torch.Generator().manual_seed(0))
    gfile = tmp_path / "g.json"
    gfile.write_text(g.to_json())
    assert main(["table", "predict", str(out), "--genotype", str(gfile)]) == 0
    assert "predicted" in capsys.readouterr().out
    assert main(["table", "predict", str(out), "--genotype", g.to_json(), "--measure"]) == 2  # simulated
    assert main(["table", "predict", str(out), "--genotype", "{bad"]) == 2


def test_roofline_formula():
    """One kernel: time = max(FLOPs / peak, bytes / bandwidth) + overhead."""
    p = roofline.get_preset("sim:edge-gpu")
    c = OpConfig("max_pool_3x3", 32, 32, 28, 28, 2, 64, "float32", "sim:edge-gpu")
    (name, flops, nbytes), = roofline.kernels(c)
    assert flops == 9 * 64 * 32 * 14 * 14 and nbytes == (64 * 32 * 28 * 28 + 64 * 32 * 14 * 14) * 4
    expect = 1e3 * (max(flops / p.peak("float32"), nbytes / p.bandwidth) + p.overhead)
    assert roofline.estimate(c, p) == pytest.approx(expect)
    half = OpConfig("max_pool_3x3", 32, 32, 28, 28, 2, 64, "float16", "sim:edge-gpu")
    assert roofline.estimate(half, p) < roofline.estimate(c, p)  # half the bytes


def test_busy_warning_needs_the_cores_busy_now(monkeypatch):
    # a high load average alone (work that ended up to a minute ago, such as the build before a fresh
    # install's demo) does not warn; cores busy now, sampled from /proc/stat, do
    import warnings

    from dartscc_fast.latency import measure
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (cpus + 3.0, 0.0, 0.0))
    monkeypatch.setattr(measure, "busy_cores", lambda window=1.0: (0.1, "stub"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert measure._warn_if_busy(torch.device("cpu"), cpus, "wall") == cpus + 3.0
    monkeypatch.setattr(measure, "busy_cores", lambda window=1.0: (float(cpus), "stub"))
    with pytest.warns(UserWarning, match=r"the machine is busy \(\d+\.\d of \d+ CPUs, stub; load average"):
        measure._warn_if_busy(torch.device("cpu"), cpus, "wall")
    with warnings.catch_warnings():  # the thread clock does not care
        warnings.simplefilter("error")
        measure._warn_if_busy(torch.device("cpu"), 1, "thread")
