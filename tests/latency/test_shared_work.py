"""Work a graph runtime shares between the edges that leave one node (common-subexpression elimination):
the once-per-source context network, the split of an op's cost in context, and predictions that count the
shared part once per node."""
import json
from collections import Counter

import pytest
from conftest import QUICK_PROFILE, needs_ort

from dartscc_fast.cli import main
from dartscc_fast.latency import LatencyTable, LatencyTableError, profile_space, space_configs
from dartscc_fast.latency.keys import OpConfig, genotype_edges
from dartscc_fast.latency.measure import (
    Timing,
    _shared_split,
    build_context_network,
    context_edges,
)
from dartscc_fast.latency.table import NO_SHARED_WORK
from dartscc_fast.nn.primitives import shared_part
from dartscc_fast.space import Genotype, get_space

TINY = get_space("fmnist-paper", C=4, input_size=8)
pytestmark = pytest.mark.filterwarnings("ignore:the machine is busy")
_ALL_POOLS = {c: [[["max_pool_3x3", j] for j in range(i + 2)] for i in range(4)] for c in ("normal", "reduce")}
_ALL_POOLS.update(normal_concat=[2, 3, 4, 5], reduce_concat=[2, 3, 4, 5])


def test_shared_part_names_what_edges_of_one_node_can_share():
    assert shared_part("sep_conv_3x3", 1) == shared_part("dil_conv_5x5", 2) == "relu"
    assert shared_part("max_pool_3x3", 2) == "max_pool_3x3/s2" != shared_part("max_pool_3x3", 1)
    assert shared_part("skip_connect", 2) == "skip_connect/s2"
    assert shared_part("skip_connect", 1) is None and shared_part("none", 1) is None


def test_once_per_source_runs_the_op_on_one_edge_per_node():
    cfg = space_configs(TINY, 2)[1]  # max_pool_3x3 on the first normal cell's shape
    every, once = context_edges(TINY, cfg), context_edges(TINY, cfg, once_per_source=True)
    assert len(once) == len({(e.cell, e.src) for e in every}) < len(every)
    assert all(min(f.dst for f in every if (f.cell, f.src) == (e.cell, e.src)) == e.dst for e in once)
    net, n = build_context_network(TINY, cfg, once_per_source=True)
    assert n == len(once)
    pools = [m for m in net.modules() if type(m).__name__ == "MaxPool2d"]
    assert len(pools) == len(once)


def _timing(ms):
    return Timing([ms] * 5)


@pytest.mark.parametrize("shared, per_edge", [(2.0, 1.0), (0.0, 1.5), (3.0, 0.0)])
def test_split_recovers_shared_and_per_edge_work(shared, per_edge):
    s, n, base = 2, 5, 10.0
    every, once = _timing(base + s * shared + n * per_edge), _timing(base + s * (shared + per_edge))
    out = _shared_split(OpConfig("max_pool_3x3", 4, 4, 8, 8, 1, 2), s, n, every, once, _timing(base))
    for stat in ("median", "min"):
        assert out["shared"][stat] == pytest.approx(shared) and out["per_edge"][stat] == pytest.approx(per_edge)
    assert out["shared"]["group"] == "max_pool_3x3/s1" and out["shared"]["sources"] == s


def test_split_keeps_the_total_when_noise_crosses_a_bound():
    cfg = OpConfig("sep_conv_3x3", 4, 4, 8, 8, 1, 2)
    # an edge of the once-per-source network measured cheaper than an extra edge of the full one: no shared
    # work, the total kept
    out = _shared_split(cfg, 2, 5, _timing(15.0), _timing(11.0), _timing(10.0))
    assert out["shared"]["median"] == 0 and out["per_edge"]["median"] == pytest.approx(1.0)
    # the full network measured no slower than the once-per-source one: all of it shared
    out = _shared_split(cfg, 2, 5, _timing(13.0), _timing(14.0), _timing(10.0))
    assert out["per_edge"]["median"] == 0 and out["shared"]["median"] == pytest.approx(1.5)


def _split_table(space, batch=2):
    """Every configuration: 1 ms per edge, plus 10 ms shared by its group once per node (none for the ops that
    share nothing); the average in context as if three edges left each node."""
    t = LatencyTable(meta={"device": "cpu", "batch": batch, "dtype": "float32"})
    for c in space_configs(space, batch):
        g = shared_part(c.primitive, c.stride)
        sh = 10.0 if g else 0.0
        t.add(c, 1.0 + sh / 3, 0.0, 5, shared={"median": sh, "min": sh, "sources": 1, "group": g or NO_SHARED_WORK},
              per_edge={"median": 1.0, "min": 1.0})
    return t


def test_predict_counts_shared_work_once_per_node_and_group():
    t = _split_table(TINY)
    assert t.shared_work_entries() == sum(shared_part(c.primitive, c.stride) is not None
                                          for c in space_configs(TINY, 2)) > 0
    g = Genotype.from_json(json.dumps({
        "normal": [[["max_pool_3x3", 0], ["max_pool_3x3", 1]], [["max_pool_3x3", 0], ["sep_conv_3x3", 1],
                                                                ["sep_conv_3x3", 2]],
                   [["skip_connect", 0], ["skip_connect", 1], ["skip_connect", 2], ["skip_connect", 3]],
                   [["max_pool_3x3", 0], ["skip_connect", 1], ["skip_connect", 2], ["skip_connect", 3],
                    ["skip_connect", 4]]],
        "reduce": [[["skip_connect", 0], ["skip_connect", 1]], [["skip_connect", 0], ["skip_connect", 1],
                                                                ["skip_connect", 2]],
                   [["skip_connect", 0], ["skip_connect", 1], ["skip_connect", 2], ["skip_connect", 3]],
                   [["skip_connect", 0], ["skip_connect", 1], ["skip_connect", 2], ["skip_connect", 3],
                    ["skip_connect", 4]]],
        "normal_concat": [2, 3, 4, 5], "reduce_concat": [2, 3, 4, 5]}))
    edges = genotype_edges(TINY, g, 2)
    once = {(cell, src, shared_part(c.primitive, c.stride)) for cell, src, c in edges} - {(c, s, None) for c in
                                                                                          range(3) for s in range(5)}
    assert t.predict(TINY, g, include_base=False) == pytest.approx(len(edges) + 10.0 * len(once))
    # in each normal cell pools leave nodes 0 and 1, sep_convs nodes 1 and 2: 4 shared parts for 6 edges
    normal = sum(not TINY.is_reduction(c) for c in range(TINY.layers))
    parts = Counter((cell, grp) for cell, _, grp in once if grp in ("relu", "max_pool_3x3/s1"))
    assert sorted(parts.values()) == [2] * (2 * normal)
    averaged = sum(t.entries[c.key()]["median"] for _, _, c in edges)
    assert t.predict(TINY, g, include_base=False, shared=False) == pytest.approx(averaged)
    assert averaged != pytest.approx(len(edges) + 10.0 * len(once))


def test_a_split_entry_must_be_whole():
    c = space_configs(TINY, 2)[0].key()
    with pytest.raises(LatencyTableError, match="both 'shared' and 'per_edge' or neither"):
        LatencyTable({c: {"median": 1.0, "shared": {"median": 1.0, "group": "relu"}}})
    with pytest.raises(LatencyTableError, match="must name its 'group'"):
        LatencyTable({c: {"median": 1.0, "shared": {"median": 1.0}, "per_edge": {"median": 1.0}}})
    with pytest.raises(LatencyTableError, match="'min' must be a finite number >= 0"):
        LatencyTable({c: {"median": 1.0, "shared": {"median": 1.0, "min": -1.0, "group": "relu"},
                          "per_edge": {"median": 1.0}}})


@needs_ort
def test_onnxruntime_in_context_table_splits_shared_work_and_round_trips(tmp_path, capsys):
    t = profile_space(TINY, runtime="onnxruntime", **QUICK_PROFILE)
    base = t.entries[[k for k in t.keys() if k.startswith("base:") and ":all:" in k][0]]
    assert base["median"] > 0
    for c in space_configs(TINY, 2):
        e = t.entries[c.key()]
        n, s = len(context_edges(TINY, c)), len(context_edges(TINY, c, True))
        assert e["shared"]["sources"] == s and e["edges"] == n
        if e["median"] > 0 and e["shared"]["group"] != NO_SHARED_WORK:  # the split keeps the cost in context
            assert s * e["shared"]["median"] + n * e["per_edge"]["median"] == pytest.approx(n * e["median"])
    t.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.entries == t.entries
    g = Genotype.from_json(json.dumps({k: v for k, v in _ALL_POOLS.items()}))
    assert back.predict(TINY, g) == pytest.approx(t.predict(TINY, g))
    assert main(["table", "show", str(tmp_path / "t.json")]) == 0
    assert "ops timed in context, shared work split once per source node" in capsys.readouterr().out


def test_predict_reads_the_average_where_the_split_lacks_the_tables_statistic():
    t = LatencyTable(meta={"device": "cpu", "batch": 2, "dtype": "float32", "statistic": "min"})
    for c in space_configs(TINY, 2):
        t.add(c, 2.0, 0.0, 5, min=1.5, shared={"median": 3.0, "group": "relu"}, per_edge={"median": 0.5})
    g = Genotype.from_json(json.dumps(_ALL_POOLS))
    assert t.predict(TINY, g, include_base=False) == pytest.approx(1.5 * len(genotype_edges(TINY, g, 2)))
