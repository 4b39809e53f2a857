"""Architectures for a latency budget: within it, no worse as it grows, a clear error below the cheapest."""
import copy
import dataclasses
import json

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.evaluation.budget import BudgetError, derive_for_budget, family_for_budgets
from dartscc_fast.evaluation.evaluate import RetrainConfig, genotype_weights, inherited_accuracies
from dartscc_fast.latency import LatencyTable
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.space import get_space, random_genotype

TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=2, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=3, progress=False, per_sample=True)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "search"
    return load_search(run_search(dataclasses.replace(TINY, out_dir=str(out))))


def test_each_pick_is_within_its_budget_and_no_worse_as_the_budget_grows(search):
    fam = family_for_budgets(search, grid_steps=3, levels=(0.0, 0.5, 1.0), progress=False)
    lo, hi = fam[0].predicted_ms, fam[-1].predicted_ms
    assert lo < hi and [d.predicted_ms for d in fam] == sorted(d.predicted_ms for d in fam)
    budgets = [lo, lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3, hi, 2 * hi]
    picks = derive_for_budget(search, budgets, grid_steps=3, levels=(0.0, 0.5, 1.0), progress=False)
    assert [p.budget_ms for p in picks] == budgets
    for p in picks:
        assert p.predicted_ms <= p.budget_ms and p.spread_ms >= 0 and p.candidates >= 1
        assert p.meets_budget is None  # not measured
    accs = [p.val_acc for p in picks]
    assert accs == sorted(accs)  # a larger budget keeps every architecture of a smaller one
    assert picks[0].derived.genotype.to_json() == fam[0].genotype.to_json()  # at the cheapest: only it fits
    assert picks[-1].candidates == len(fam)


def test_a_budget_below_the_cheapest_names_it(search):
    fam = family_for_budgets(search, grid_steps=3, levels=(0.0, 1.0), progress=False)
    with pytest.raises(BudgetError, match=rf"cheapest, at S = .* is predicted at {fam[0].predicted_ms:.2f} ms"):
        derive_for_budget(search, [0.5 * fam[0].predicted_ms], grid_steps=3, levels=(0.0, 1.0), progress=False)
    with pytest.raises(ValueError, match="positive"):
        derive_for_budget(search, [-1.0], progress=False)
    with pytest.raises(ValueError, match="at least one budget"):
        derive_for_budget(search, [], progress=False)


def test_conservative_picks_fit_the_top_of_their_interval(search):
    spread = LatencyTable(meta=dict(search.table.meta))  # the search's table, with spreads (simulated has none)
    for k, e in search.table.entries.items():
        spread.add(k, median=e["median"], iqr=0.2 * e["median"])
    kw = dict(grid_steps=3, levels=(0.0, 0.5, 1.0), progress=False, table=spread)
    fam = family_for_budgets(dataclasses.replace(search, table=spread), grid_steps=3, levels=kw["levels"],
                             progress=False)
    top = {d.genotype.to_json(): d.predicted_ms + spread.predict_spread(search.space, d.genotype) for d in fam}
    lo, hi = fam[0].predicted_ms, fam[-1].predicted_ms
    assert min(top.values()) > lo
    budgets = [min(top.values()), (lo + hi) / 2, max(top.values())]
    picks = derive_for_budget(search, budgets, conservative=True, **kw)
    plain = derive_for_budget(search, budgets, **kw)
    for p, q in zip(picks, plain):
        assert p.predicted_ms + p.spread_ms <= p.budget_ms * (1 + 1e-9)
        assert p.candidates == sum(t <= p.budget_ms for t in top.values()) <= q.candidates
        assert p.to_dict()["conservative"] and not q.to_dict()["conservative"]
    assert picks[1].candidates < plain[1].candidates and picks[-1].candidates == len(fam)
    # the cheapest prediction fits plainly, but not the top of its interval
    assert derive_for_budget(search, [lo], **kw)[0].predicted_ms == pytest.approx(lo)
    with pytest.raises(BudgetError, match=r"\(at most [0-9.]+ ms\)"):
        derive_for_budget(search, [lo], conservative=True, **kw)


@pytest.mark.parametrize("dear_val, other_val, keeps_dearest", [
    (0.9, 0.5, True),     # the dearest better on validation
    (0.79, 0.8, True),    # level within 2 SE: the dearer
    (0.1, 0.9, False),    # the supernet's pick better by far more than 2 SE
])
def test_retraining_keeps_the_dearest_unless_the_pick_is_clearly_better(search, monkeypatch, dear_val, other_val,
                                                                        keeps_dearest):
    from dartscc_fast.evaluation import budget
    kw = dict(grid_steps=3, levels=(0.0, 0.5, 1.0), progress=False)
    fam = family_for_budgets(search, **{k: kw[k] for k in ("grid_steps", "levels")}, progress=False)
    (plain,) = derive_for_budget(search, [fam[-1].predicted_ms], **kw)
    assert plain.retrained is None and plain.to_dict()["rival"] is None
    dearest, pick = fam[-1].genotype.to_json(), plain.derived.genotype.to_json()
    seen = []

    def fake(space, genotype, loaders, cfg, desc=""):  # test accuracies the reverse of validation's
        seen.append(genotype.to_json())
        val = dear_val if genotype.to_json() == dearest else other_val
        return {"val_acc": val, "test_acc": 1 - val, "epochs": cfg.epochs}

    monkeypatch.setattr(budget, "retrain", fake)
    cfg = RetrainConfig(epochs=1, progress=False)
    (p,) = derive_for_budget(search, [fam[-1].predicted_ms], retrain=cfg, **kw)
    if pick == dearest:  # nothing to choose between: one candidate, no rival
        assert seen == [dearest] and p.rival is None and p.derived.genotype.to_json() == dearest
        return
    assert set(seen) == {dearest, pick} and len(seen) == 2
    kept, rival_val = (dearest, other_val) if keeps_dearest else (pick, dear_val)
    assert p.derived.genotype.to_json() == kept and p.rival["val_acc"] == rival_val
    assert p.retrained["val_acc"] == (dear_val if keeps_dearest else other_val)
    assert p.spread_ms == search.table.predict_spread(search.space, p.derived.genotype)
    # at the cheapest budget only one architecture fits: it is both candidates, retrained once
    seen.clear()
    (q,) = derive_for_budget(search, [fam[0].predicted_ms], retrain=cfg, **kw)
    assert seen == [fam[0].genotype.to_json()] and q.rival is None


@pytest.mark.slow
def test_measured_picks_say_whether_they_meet_the_budget(search):
    top = family_for_budgets(search, grid_steps=2, levels=(1.0,), progress=False)[-1].predicted_ms
    (p,) = derive_for_budget(search, [top], grid_steps=2, levels=(1.0,), measure=True, max_batches=1,
                             progress=False)
    assert p.derived.measured_ms > 0 and p.meets_budget == (p.derived.measured_ms <= top)
    assert p.to_dict()["predicted_interval_ms"][0] <= p.predicted_ms


def test_measured_picks_read_the_tables_statistic(search, monkeypatch):
    import dartscc_fast.evaluation.budget as budget
    monkeypatch.setattr(budget, "measure_latency", lambda *a, **k: {"median": 9.0, "min": 4.0, "iqr": 1.0, "runs": 3})
    table = LatencyTable.from_dict(copy.deepcopy(search.table.to_dict()))
    for e in table.entries.values():
        e.setdefault("min", e["median"])  # a simulated table has no runs; the same times, read as the fastest
    top = family_for_budgets(search, grid_steps=2, levels=(1.0,), progress=False)[-1].predicted_ms
    for t, want in ((table, 9.0), (table.with_statistic("min"), 4.0)):
        (p,) = derive_for_budget(search, [top], table=t, grid_steps=2, levels=(1.0,), measure=True, max_batches=1,
                                 progress=False)
        assert p.derived.measured_ms == want


@pytest.mark.slow
def test_cli_budgets_write_genotype_and_exports(search, tmp_path, capsys):
    top = family_for_budgets(search, grid_steps=2, levels=(0.0, 0.5, 1.0), progress=False)[-1].predicted_ms
    out = tmp_path / "family"
    ckpt = str(search.config.out_dir)
    assert cli.main(["derive", "--search", ckpt, "--budget-ms", f"{top:.4f}", f"{2 * top:.4f}", "--grid", "2",
                     "--levels", "3", "--out", str(out), "--export", "torchscript"]) == 0
    text = capsys.readouterr().out
    assert text.count("budget ") == 2 and "predicted interval" in text
    records = sorted(out.glob("budget*.json"))
    assert len(records) == 2 and len(list(out.glob("budget*.pt"))) == 2
    rec = json.loads(records[0].read_text())
    assert rec["predicted_ms"] <= rec["budget_ms"] and "kappa" in rec and "S" in rec
    assert cli.main(["derive", "--search", ckpt, "--budget-ms", "1e-6", "--levels", "2"]) == 2
    assert "cheapest" in capsys.readouterr().err
    assert cli.main(["derive", "--search", ckpt]) == 2  # neither --S nor --budget-ms


def test_inherited_accuracies_of_many_equal_one_at_a_time_with_gradients(search):
    """One copy of the supernet and no autograd give the figures of a fresh copy per genotype under autograd."""
    fam = family_for_budgets(search, grid_steps=2, levels=(0.0, 1.0), progress=False)[:3]
    loaders = search.config.loaders()
    many = inherited_accuracies(search.supernet, search.space, [d.genotype for d in fam], loaders.val)
    for d, acc in zip(fam, many):
        net = copy.deepcopy(search.supernet).train()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.track_running_stats = False
        wn, wr = genotype_weights(search.space, d.genotype)
        hits = sum(int((net(x, wn, wr, hard=True).argmax(1) == y).sum()) for x, y in loaders.val)
        assert acc == hits / len(loaders.val.dataset)


def test_predict_spread_is_half_the_summed_spreads():
    space = get_space("fmnist-paper", C=4, input_size=8)
    g = random_genotype(space, torch.Generator().manual_seed(0))
    from dartscc_fast.latency.keys import genotype_configs
    keys = [c.key() for c in genotype_configs(space, g, 64)]
    t = LatencyTable(meta={"device": "cpu", "batch": 64, "dtype": "float32", "spaces": [space.name]})
    for k in set(keys):
        t.add(k, median=1.0, iqr=0.2)
    assert t.predict_spread(space, g) == pytest.approx(0.5 * 0.2 * len(keys))
    assert t.predict(space, g) == pytest.approx(len(keys))


def test_budgets_on_another_table_predict_with_it(search):
    """A table of the runtime you deploy with (here: the search's, every entry doubled) gives the same family
    at its own latencies; a table that misses the space is refused by name."""
    doubled = LatencyTable(meta=dict(search.table.meta, runtime="onnxruntime"))
    for k, e in search.table.entries.items():
        doubled.add(k, median=2 * e["median"], iqr=2 * e.get("iqr", 0.0))
    kw = dict(grid_steps=2, levels=(0.0, 1.0), progress=False)
    fam = family_for_budgets(search, **kw)
    top = 2 * fam[-1].predicted_ms
    (own,) = derive_for_budget(search, [top / 2], **kw)
    (other,) = derive_for_budget(search, [top], table=doubled, **kw)
    assert other.predicted_ms == pytest.approx(2 * own.predicted_ms)
    assert other.derived.genotype.to_json() == own.derived.genotype.to_json()
    assert search.table is not doubled  # the search itself keeps its table
    empty = LatencyTable(meta=dict(search.table.meta))
    with pytest.raises(BudgetError, match="does not cover the search's space"):
        derive_for_budget(search, [top], table=empty, **kw)
