"""The strength axis (alpha(S, t), kappa in [0, kappa_max]), the table-only architecture, and reproduce."""
import dataclasses
import importlib.util
import json
import math
import os
import shutil

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.evaluation.demo import DemoConfig
from dartscc_fast.evaluation.derive import derive, edges_changed, table_only, table_only_alphas
from dartscc_fast.evaluation.report import RANDOM_DRAWS, row_genotype
from dartscc_fast.evaluation.reproduce import (
    ReproduceConfig,
    _same_protocol,
    aggregate,
    mean_sd,
    results_markdown,
    run_reproduce,
)
from dartscc_fast.search import SearchConfig, default_warmup, draw_strength, load_search, run_search
from dartscc_fast.search.hypernet import StrengthHypernet, hypernet_from_config, kappa_of_t, t_of_kappa
from dartscc_fast.space import Genotype, SearchSpace, derive_genotype

TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=2, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=3, progress=False)


def test_kappa_curve_ends_and_inverse():
    assert kappa_of_t(0.0, 20.0) == 0.0
    assert kappa_of_t(1.0, 20.0) == pytest.approx(20.0)
    assert kappa_of_t(0.5, 20.0) == pytest.approx(20.0 * 9 / 99)  # e^(ln 100 / 2) = 10
    for kappa in (0.0, 0.3, 2.0, 19.9):
        assert kappa_of_t(t_of_kappa(kappa, 20.0), 20.0) == pytest.approx(kappa, abs=1e-9)
    t = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(kappa_of_t(t, 20.0), torch.tensor([kappa_of_t(float(v), 20.0) for v in t]))
    with pytest.raises(ValueError, match="kappa_max"):
        t_of_kappa(21.0, 20.0)
    with pytest.raises(ValueError, match="kappa"):
        t_of_kappa(float("nan"), 20.0)


def test_strength_hypernet_interpolates_its_knots_and_round_trips():
    torch.manual_seed(0)
    h = StrengthHypernet("pwl", 14, 3, strength_knots=3, knots=4)
    with torch.no_grad():
        for j, net in enumerate(h.nets):
            net.A0.fill_(float(j))  # knot j's logits are j everywhere (its S part is 0)
    S = torch.tensor([0.2, 0.3, 0.5])
    an, ar = h(S, 0.25)  # halfway between knots 0 and 1
    torch.testing.assert_close(an, torch.full((14, 3), 0.5))
    an_b, _ = h(S.expand(4, 3), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(an_b[:, 0, 0], torch.tensor([0.0, 1.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        h(S, 1.5)
    with pytest.raises(ValueError, match="needs t of shape"):
        h(S.expand(4, 3), 0.5)
    clone = hypernet_from_config(json.loads(json.dumps(h.config())))
    clone.load_state_dict(h.state_dict())
    torch.testing.assert_close(clone(S, 0.6)[1], h(S, 0.6)[1])
    with pytest.raises(ValueError, match="S-dependent"):
        StrengthHypernet("constant", 14, 3)


def test_table_only_is_the_least_S_weighted_latency_by_hand():
    space = SearchSpace("tiny", ("max_pool_3x3", "skip_connect", "sep_conv_3x3"), layers=3, steps=1, multiplier=1)
    # rows: normal edges 0, 1 then reduction edges 0, 1 (both stride 2); columns pool, identity, conv
    L = torch.tensor([[0.30, 0.01, 0.20],
                      [0.30, 0.50, 0.20],
                      [0.10, 0.90, 0.40],
                      [0.30, 0.90, 0.10]])
    S = "pool=0.7,identity=0.15,conv=0.15"
    # prices: pool x0.7, identity x0.15, conv x0.15 -> row 0: .21 .0015 .03 -> identity; row 1: .21 .075 .03 -> conv;
    # row 2: .07 .135 .06 -> conv; row 3: .21 .135 .015 -> conv
    an, ar = table_only_alphas(L, S, space.type_index().tolist())
    g = derive_genotype(space, an, ar)
    assert g.normal == [[("skip_connect", 0), ("sep_conv_3x3", 1)]]
    assert g.reduce == [[("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]]
    # pool-heavy S=B prices conv up: row 2 -> pool (.015 .135 .28), row 3 -> identity? (.045 .135 .07) -> pool
    an, ar = table_only_alphas(L, "pool=0.15,identity=0.15,conv=0.70", space.type_index().tolist())
    g_b = derive_genotype(space, an, ar)
    assert g_b.reduce == [[("max_pool_3x3", 0), ("max_pool_3x3", 1)]]
    assert edges_changed(space, g, g_b) == 3 and edges_changed(space, g, g) == 0


def test_search_with_a_strength_axis_is_deterministic_and_reloads(tmp_path):
    cfg = dataclasses.replace(TINY, per_sample=True, kappa=3.0, kappa_max=10.0, out_dir=str(tmp_path / "a"))
    r1 = load_search(run_search(cfg))
    r2 = load_search(run_search(dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))))
    assert r1.has_strength and isinstance(r1.hypernet, StrengthHypernet)
    for kappa in (0.0, 3.0, 10.0):
        torch.testing.assert_close(r1.alphas("A", kappa)[1], r2.alphas("A", kappa)[1], rtol=0, atol=0)
    assert derive(r1, "C").extra["kappa"] == 3.0
    assert derive(r1, "C").genotype.to_json() == derive(r1, "C", kappa=3.0).genotype.to_json()
    with pytest.raises(ValueError, match="kappa_max"):
        derive(r1, "C", kappa=11.0)
    # the profiles' kappa must lie on the axis
    with pytest.raises(ValueError, match="kappa_max"):
        dataclasses.replace(cfg, kappa=30.0)


def test_old_checkpoint_without_the_axis_loads(tmp_path):
    cfg = dataclasses.replace(TINY, strength=False, kappa=5.0, out_dir=str(tmp_path))
    path = run_search(cfg)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    for name in ("strength", "kappa_max", "strength_curve", "strength_knots", "strength_zero_share"):
        ck["config"].pop(name)  # as saved before the axis existed
    ck.pop("integrity")  # and without the hash that checkpoints carry now (an edited file fails it)
    torch.save(ck, path)
    r = load_search(tmp_path)
    assert not r.has_strength and r.config.kappa == 5.0 and r.config.strength_zero_share == 0.0
    assert derive(r, "B").extra["kappa"] == 5.0
    with pytest.raises(ValueError, match="no strength axis"):
        derive(r, "B", kappa=1.0)


def test_strength_draws_put_their_share_at_zero_and_the_rest_uniform():
    gen = torch.Generator().manual_seed(0)
    cfg = dataclasses.replace(TINY, per_sample=True, strength_zero_share=0.25)
    t = draw_strength(cfg, gen, 20000)
    assert t.shape == (20000,) and bool(((t >= 0) & (t <= 1)).all())
    assert abs(float((t == 0).float().mean()) - 0.25) < 0.015
    rest = t[t > 0]
    assert abs(float(rest.mean()) - 0.5) < 0.01 and abs(float((rest < 0.5).float().mean()) - 0.5) < 0.015
    # the same generator state gives the same draws; share 0 leaves plain uniform draws
    again = draw_strength(cfg, torch.Generator().manual_seed(0), 20000)
    torch.testing.assert_close(t, again, rtol=0, atol=0)
    plain = draw_strength(dataclasses.replace(cfg, strength_zero_share=0.0), torch.Generator().manual_seed(0), 4)
    torch.testing.assert_close(plain, torch.rand(4, generator=torch.Generator().manual_seed(0)))
    assert draw_strength(dataclasses.replace(cfg, per_sample=False), gen, 8).shape == ()
    assert draw_strength(dataclasses.replace(cfg, strength=False, hypernet="pwl"), gen, 8) is None
    with pytest.raises(ValueError, match="strength_zero_share"):
        dataclasses.replace(cfg, strength_zero_share=1.5)


def test_default_warmup_is_half_the_epochs_and_leaves_one_to_search():
    assert [default_warmup(e) for e in (1, 2, 3, 4, 5, 20)] == [0, 1, 1, 2, 2, 10]
    assert SearchConfig(epochs=5).warmup_epochs == 2 and SearchConfig(epochs=1).warmup_epochs == 0
    cfg = SearchConfig(epochs=6)
    assert SearchConfig.from_dict(cfg.to_dict()).warmup_epochs == 3  # stored resolved: a resume compares ints


def test_table_only_of_a_search_uses_its_normalised_latency(tmp_path):
    r = load_search(run_search(dataclasses.replace(TINY, epochs=1, out_dir=str(tmp_path))))
    t = table_only(r, "C")
    E = r.space.num_edges
    price = torch.tensor([0.70, 0.15, 0.15])[r.space.type_index()]
    onehot = torch.nn.functional.one_hot((r.L * price).argmin(-1), r.space.k).float()
    assert t.genotype.to_json() == derive_genotype(r.space, onehot[:E], onehot[E:]).to_json()


def test_mean_sd():
    s = mean_sd([1.0, 2.0, None, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0)
    assert s["se"] == pytest.approx(1 / math.sqrt(3))
    assert mean_sd([None])["mean"] is None


@pytest.mark.slow
def test_tiny_reproduce_two_seeds_resumes(tmp_path, capsys):
    cfg = ReproduceConfig(out_dir=str(tmp_path), seeds=(0, 1), limit=400, split=(0.5, 0.2, 0.3), epochs=1,
                          warmup_epochs=0, retrain_epochs=1, fbnet_kappas=(1.0,), grid=1, front_retrain=1,
                          table_threads=(1,), threads=1, max_steps_per_epoch=2, retrain_max_steps=1,
                          profile_seconds=0.002, measure=False, extra_kappas=(5.0,))
    res = run_reproduce(cfg, log=lambda m: None)
    assert res["seeds"] == 2 and set(res["profiles"]) == {"A", "B", "C"}
    assert list(res["at_kappa"]) == ["5"] and set(res["at_kappa"]["5"]["profiles"]) == {"A", "B", "C"}
    assert "## Profiles at kappa 5 (same searches)\n" in results_markdown(res)
    fewer = {**res, "at_kappa": {"5": {**res["at_kappa"]["5"], "seeds": 1}}}  # as when read-back seeds add it
    assert "## Profiles at kappa 5 (same searches, 1 of the 2 seeds)\n" in results_markdown(fewer)
    assert res["profiles"]["A"]["test_acc"]["n"] == 2 and res["profiles"]["A"]["over_table"]["n"] == 2
    assert set(res["front"]) == {"darts kappa=0", "fbnet kappa=1"}
    md = (tmp_path / "results.md").read_text()
    assert "| over table-only |" in md and "seeds where it held" in md
    assert (tmp_path / "front.png").stat().st_size > 1000
    rep = json.loads((tmp_path / "seed0" / "report.json").read_text())
    assert rep["baselines"]["table"] and "table_only_edges_changed" in rep["profiles"][0]
    assert "learned" in rep and "coverage" in rep and rep["family"]
    assert "Did the search learn?" in (tmp_path / "seed0" / "report.md").read_text()
    # a second run reads every seed back instead of running it again
    again = run_reproduce(cfg, log=lambda m: None)
    assert again["profiles"] == res["profiles"]
    assert aggregate([rep])["seeds"] == 1
    # a moved run directory is read back too (where a run lives is not part of its protocol)
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.copytree(tmp_path, moved)
    lines = []
    assert run_reproduce(dataclasses.replace(cfg, out_dir=str(moved)), log=lines.append)["profiles"] == res["profiles"]
    assert sum("done before" in m for m in lines) == 2
    # the front is recomputed from the retrained figures, not read from a saved (possibly older) verdict
    stale = {**rep, "front": {"rows": [{"baseline": "darts kappa=0", "family_acc": 1.0, "acc": 0.0}]}}
    assert aggregate([stale])["front"] == aggregate([rep])["front"]
    assert set(aggregate([stale])["front"]) == {"darts kappa=0", "fbnet kappa=1"}
    # several random draws per profile, and "over random" against their mean
    labels = [(r["label"], r["draw"]) for r in rep["baselines"]["random"]]
    assert labels[:4] == [("random ~A", 0), ("random ~B", 0), ("random ~C", 0), ("random ~A #2", 1)]
    for p in rep["profiles"]:
        draws = [r["test_acc"] for r in rep["baselines"]["random"] if r["matched"] == p["label"]]
        assert len(draws) == RANDOM_DRAWS == rep["learned"][p["label"]]["random_draws"]
        assert rep["learned"][p["label"]]["over_random"] == pytest.approx(100 * (p["test_acc"] - sum(draws) / 3))
    assert "| random draws |" in (tmp_path / "seed0" / "report.md").read_text() and "mean of the 3 random" in md
    # bench/random_matched_many.py: the report's own draws read back, one more retrained per profile
    bench = _bench_module("random_matched_many")
    many = tmp_path.parent / "random-many.json"
    capsys.readouterr()
    bench.main(["--runs", str(tmp_path), "--per-profile", "4", "--threads", "1", "--out", str(many)])
    rows = json.loads(many.read_text())
    own = {x["matched"]: x["test_acc"] for x in rep["baselines"]["random"] if "#" not in x["label"]}
    assert {n: rows[f"{tmp_path / 'seed0'}/{n}/0"]["test_acc"] for n in "ABC"} == own
    assert all(f"{tmp_path / s}/{n}/3" in rows for s in ("seed0", "seed1") for n in "ABC")
    printed = capsys.readouterr().out
    assert "mean of 4" in printed and "2 seeds" in printed
    # bench/revert_to_table.py: a type on which the profile departs from its table-only pick is reverted, retrained
    revert = _bench_module("revert_to_table")
    table = {x["matched"]: x for x in rep["baselines"]["table"]}
    departs = [(p["label"], t) for p in rep["profiles"] for t in ("pool", "identity", "conv")
               if revert.revert(row_genotype(p), row_genotype(table[p["label"]]), t)[1]]
    assert departs, "the tiny searches match their table-only picks: nothing for revert_to_table to revert"
    name, kind = departs[0]
    out = tmp_path.parent / "revert.json"
    revert.main(["--runs", str(tmp_path), "--profile", name, "--type", kind, "--threads", "1", "--out", str(out)])
    row = json.loads(out.read_text())[f"{tmp_path / 'seed0'}/{name}/{kind}"]
    assert row["edges_reverted"] > 0 and row["reverted"]["ops"][kind] < row["searched"]["ops"][kind]
    assert row["searched"]["test_acc"] is not None and "with its" in capsys.readouterr().out


def _bench_module(name):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(name, os.path.join(repo, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_revert_to_table_sets_back_only_the_departures_of_one_type():
    revert = _bench_module("revert_to_table").revert
    searched = Genotype([[("max_pool_3x3", 0), ("sep_conv_3x3", 1)]], [[("max_pool_3x3", 0), ("max_pool_3x3", 1)]])
    table = Genotype([[("skip_connect", 0), ("sep_conv_3x3", 1)]], [[("sep_conv_3x3", 0), ("max_pool_3x3", 1)]])
    back, n = revert(searched, table, "pool")
    # the normal cell's pool becomes the table's identity, the reduce cell's first the table's conv; the second
    # pool is the table's own choice too, so it stays
    assert n == 2 and back.normal == [[("skip_connect", 0), ("sep_conv_3x3", 1)]]
    assert back.reduce == [[("sep_conv_3x3", 0), ("max_pool_3x3", 1)]]
    assert revert(searched, table, "conv") == (searched, 0)
    with pytest.raises(ValueError, match="different inputs"):
        revert(searched, Genotype([[("skip_connect", 0), ("sep_conv_3x3", 0)]], table.reduce), "pool")


def test_reproduce_cli_refuses_bad_settings():
    with pytest.raises(ValueError, match="seeds must differ"):
        ReproduceConfig(seeds=(1, 1))
    assert cli.main(["reproduce", "--seeds", "0", "0"]) == 2


def test_sandwich_trains_the_accurate_end_every_step_and_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(TINY, per_sample=True, kappa=3.0, kappa_max=10.0, sandwich=True, epochs=3,
                              strength_zero_share=0.0, out_dir=str(tmp_path / "a"))
    whole = load_search(run_search(cfg))
    plain = load_search(run_search(dataclasses.replace(cfg, sandwich=False, out_dir=str(tmp_path / "p"))))
    # the extra t = 0 gradients move the accurate end's knot, which uniform draws in (0, 1] barely reach
    knot0 = lambda r: r.hypernet.nets[0].A0  # noqa: E731
    assert not torch.equal(knot0(whole), knot0(plain))
    # stopped after one epoch and resumed: bitwise the uninterrupted search
    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "b"))
    run_search(part, stop_after_epochs=1)
    resumed = load_search(run_search(part, resume=True))
    for kappa in (0.0, 3.0):
        torch.testing.assert_close(resumed.alphas("B", kappa)[0], whole.alphas("B", kappa)[0], rtol=0, atol=0)
    assert SearchConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "sandwich"}).sandwich is False
    # on by default with the axis; a fixed-kappa search has no accurate end to train apart
    assert TINY.sandwich is True and dataclasses.replace(TINY, strength=False).sandwich is False


def test_a_reproduce_seed_from_before_the_sandwich_rule_is_not_read_back_as_one_with_it():
    cfg = DemoConfig(out_dir="x")
    saved = dataclasses.asdict(cfg)
    assert _same_protocol(saved, cfg) and _same_protocol(saved, dataclasses.replace(cfg, sandwich=True))
    old = {k: v for k, v in saved.items() if k != "sandwich"}  # a report written before the option existed
    assert not _same_protocol(old, cfg) and _same_protocol(old, dataclasses.replace(cfg, sandwich=False))
    assert _same_protocol(dict(saved, strength=False), dataclasses.replace(cfg, strength=False, sandwich=False))


def test_a_reproduce_seed_with_more_extra_kappas_serves_a_run_asking_for_fewer():
    cfg = DemoConfig(out_dir="x")
    with_five = dict(dataclasses.asdict(cfg), extra_kappas=[5.0])  # as read back from report.json
    assert _same_protocol(with_five, cfg) and _same_protocol(with_five, dataclasses.replace(cfg, extra_kappas=(5,)))
    assert not _same_protocol(dataclasses.asdict(cfg), dataclasses.replace(cfg, extra_kappas=(5.0,)))
    assert not _same_protocol(with_five, dataclasses.replace(cfg, extra_kappas=(5.0, 10.0)))
    assert not _same_protocol(dict(with_five, epochs=cfg.epochs + 1), cfg)


def test_a_reproduce_seed_from_before_several_random_draws_is_read_back_as_one_draw():
    cfg = DemoConfig(out_dir="x")
    assert cfg.random_draws == RANDOM_DRAWS == 3
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "random_draws"}  # a report from before
    assert not _same_protocol(old, cfg) and _same_protocol(old, dataclasses.replace(cfg, random_draws=1))
    assert ReproduceConfig(out_dir="x", seeds=(1,), random_draws=2).demo_config(1).random_draws == 2
    with pytest.raises(ValueError, match="random_draws"):
        DemoConfig(out_dir="x", random_draws=0)


def test_reproduce_passes_its_normalisation_to_every_seed_and_tells_seeds_apart_by_it():
    cfg = ReproduceConfig(out_dir="x", seeds=(3, 4), normalise="type-cell")
    assert [cfg.demo_config(s).normalise for s in (3, 4)] == ["type-cell", "type-cell"]
    dc = cfg.demo_config(3)
    assert not _same_protocol(dataclasses.asdict(dataclasses.replace(dc, normalise="type-stride")), dc)
    with pytest.raises(ValueError, match="normalise"):
        ReproduceConfig(out_dir="x", normalise="per-op")
