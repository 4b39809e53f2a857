"""The search end to end on a tiny budget: search, derive, evaluate, report; resume; DDP."""
import dataclasses
import json
import os
import socket

import pytest
import torch

from dartscc_fast import cli
from dartscc_fast.evaluation.derive import derive, export_model
from dartscc_fast.evaluation.evaluate import baseline_config, genotype_weights, inherited_accuracy
from dartscc_fast.search import SearchConfig, load_search, run_search, spawn_ddp, temperature
from dartscc_fast.space import DiscreteNetwork, count_parameters

# A small supernet (C=4) on 300 of the shipped images; a simulated latency table (no profiling).
TINY = SearchConfig(space_overrides={"C": 4}, limit=300, epochs=2, warmup_epochs=0, batch_size=16,
                    max_steps_per_epoch=3, progress=False)


def _states_equal(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def _model_state(path):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {**{"s." + k: v for k, v in ck["model"]["supernet"].items()},
            **{"h." + k: v for k, v in ck["model"]["hypernet"].items()}}


def test_temperature_schedule():
    cfg = SearchConfig()
    assert temperature(cfg, 0, 11) == pytest.approx(1.0)
    assert temperature(cfg, 10, 11) == pytest.approx(0.2)
    assert temperature(cfg, 5, 11) == pytest.approx(0.6)
    cfg = dataclasses.replace(cfg, tau_schedule="exp")
    assert temperature(cfg, 10, 11) == pytest.approx(0.2)


def test_bad_config():
    with pytest.raises(ValueError, match="protocol"):
        SearchConfig(protocol="trilevel")
    with pytest.raises(ValueError, match="simplex"):
        SearchConfig(fixed_S="pool=0.9,identity=0.9,conv=0")
    with pytest.raises(ValueError, match="split must be three fractions"):
        dataclasses.replace(TINY, split=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="warmup_epochs"):
        SearchConfig(epochs=2, warmup_epochs=2)


@pytest.mark.parametrize("variant", [
    {"hard": False, "hypernet": "pwl"}, {"per_sample": True, "hypernet": "mlp"},
    {"protocol": "bilevel", "optimizer": "sgd"}])
def test_search_variants_run(tmp_path, variant):
    cfg = dataclasses.replace(TINY, epochs=1, max_steps_per_epoch=2, out_dir=str(tmp_path), **variant)
    path = run_search(cfg)
    r = load_search(path)
    assert r.epoch == 1 and len(r.history) == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in r.history[0].values())
    assert (tmp_path / "log.csv").read_text().count("\n") == 1 + 2


def test_type_normalised_search_prices_every_type_alike(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, max_steps_per_epoch=2, normalise="type", out_dir=str(tmp_path))
    r = load_search(run_search(cfg))
    ti = r.space.type_index().tolist()
    for t in range(3):  # pool, identity, conv: each type's uniform architecture costs 1 in the search's L
        cols = [m for m, u in enumerate(ti) if u == t]
        assert r.L[:, cols].mean(-1).sum().item() == pytest.approx(1.0, rel=1e-5)
    assert r.config.normalise == "type"
    # the FBNet baseline keeps the plain latency, so its kappa means what it means without the hypernetwork
    fb = baseline_config(cfg, "fbnet", 1.5)
    assert fb.normalise == "uniform" and fb.kappa == 1.5
    assert baseline_config(dataclasses.replace(cfg, normalise="type-stride"), "fbnet", 1.5).normalise == "uniform"
    assert baseline_config(dataclasses.replace(cfg, normalise="cheapest"), "fbnet", 1.5).normalise == "cheapest"
    with pytest.raises(ValueError, match="normalise"):
        SearchConfig(normalise="median")


def test_search_is_deterministic_and_resume_matches(tmp_path):
    # with a one-epoch weight warm-up, so the resume crosses from warm-up to search
    full = dataclasses.replace(TINY, warmup_epochs=1, out_dir=str(tmp_path / "full"))
    again = dataclasses.replace(full, out_dir=str(tmp_path / "again"))
    cut = dataclasses.replace(full, out_dir=str(tmp_path / "cut"))
    a = _model_state(run_search(full))
    _states_equal(a, _model_state(run_search(again)))

    # interrupted after the first epoch, then resumed
    run_search(cut, stop_after_epochs=1)
    r1 = load_search(cut.out_dir)
    assert r1.epoch == 1
    # the warm-up trains the weights only: the hypernetwork is still at its start
    from dartscc_fast.search import build_model
    start = build_model(cut, cut.get_space(), L=r1.L).hypernet.state_dict()
    _states_equal(start, r1.hypernet.state_dict())

    # and a crash in the middle of the second epoch, then resumed again
    def crash(row):
        if row["step"] == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_search(cut, resume=True, on_step=crash)
    assert load_search(cut.out_dir).epoch == 1
    b = _model_state(run_search(cut, resume=True))
    _states_equal(a, b)
    assert load_search(cut.out_dir).epoch == 2
    rows = (tmp_path / "cut" / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[1]) for r in rows[1:]] == list(range(6))  # no duplicated steps after resume

    with pytest.raises(ValueError, match="other settings"):
        run_search(dataclasses.replace(cut, kappa=9.0), resume=True)


def test_a_search_without_latency_term_resumes_under_other_pricing(tmp_path):
    """The DARTS baseline (kappa 0, no strength axis) depends on no latency pricing, so its checkpoint serves a
    run that normalises otherwise; a search with a latency term does not."""
    darts = baseline_config(dataclasses.replace(TINY, out_dir=str(tmp_path / "h" / "search")), "darts")
    run_search(darts, stop_after_epochs=1)
    run_search(dataclasses.replace(darts, normalise="type-cell", stride_balance=0.25), resume=True)
    assert load_search(darts.out_dir).epoch == darts.epochs
    priced = dataclasses.replace(TINY, kappa=1.0, out_dir=str(tmp_path / "priced"))
    run_search(priced, stop_after_epochs=1)
    with pytest.raises(ValueError, match=r"other settings \(normalise\)"):
        run_search(dataclasses.replace(priced, normalise="type-cell"), resume=True)


@pytest.mark.parametrize("protocol", ["single", "bilevel"])
def test_resume_from_a_mid_epoch_checkpoint_is_bitwise(tmp_path, protocol):
    """A checkpoint every 2 steps; killed mid-epoch, resumed: bitwise the uninterrupted run (weights,
    optimiser-driven hypernetwork, history and log), also when the validation batches wrapped around."""
    full = dataclasses.replace(TINY, epochs=2, max_steps_per_epoch=5, checkpoint_every=2, protocol=protocol,
                               out_dir=str(tmp_path / "full"))
    cut = dataclasses.replace(full, out_dir=str(tmp_path / "cut"))
    a = _model_state(run_search(full))

    def crash(row):
        if row["step"] == 7:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_search(cut, on_step=crash)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["position"], ck["step"], ck["finished"]) == (1, 1, 6, False)
    assert ck["rng"][0]["val_pos"] == (1 if protocol == "bilevel" else 0)
    # the checkpoint frequency may change on resume (it does not change the search)
    b = _model_state(run_search(dataclasses.replace(cut, checkpoint_every=3), resume=True))
    _states_equal(a, b)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(load_search(cut.out_dir).history) == strip(load_search(full.out_dir).history)
    rows = lambda d: [r.split(",")[:-1] for r in (d / "log.csv").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "cut") == rows(tmp_path / "full") and len(rows(tmp_path / "full")) == 1 + 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path):
    cfg = dataclasses.replace(TINY, out_dir=str(tmp_path), epochs=1, max_steps_per_epoch=3)
    spawn_ddp(cfg, world=2, port=_free_port())
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    _states_equal(s0, s1)
    init = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert init["world_size"] == 2 and init["epoch"] == 1
    # the replicas trained: they differ from a fresh initialisation
    from dartscc_fast.search import build_model
    fresh = build_model(cfg, cfg.get_space()).state_dict()
    assert any(not torch.equal(fresh[k], s0[k]) for k in fresh if fresh[k].is_floating_point())


def test_end_to_end_cli(tmp_path, capsys):
    search = tmp_path / "search"
    args = ["search", "--out", str(search), "--channels", "4", "--limit", "300", "--epochs", "2",
            "--batch-size", "16", "--max-steps-per-epoch", "3", "--kappa", "4", "--split", "0.6", "0.1", "0.3"]
    assert cli.main(args) == 0
    assert (search / "checkpoint.pt").is_file() and (search / "log.csv").is_file()
    # the split is part of the search: evaluate and report rebuild the same one from the checkpoint
    cfg = load_search(search).config
    assert cfg.split == (0.6, 0.1, 0.3) and cfg.loaders().split.sizes == (180, 30, 90)
    fbnet = tmp_path / "fbnet"
    assert cli.main(args[:2] + [str(fbnet)] + args[3:] + ["--hypernet", "constant", "--fixed-S", "A"]) == 0

    out = tmp_path / "derived"
    assert cli.main(["derive", "--search", str(search), "--S", "pool=0.7,identity=0.15,conv=0.15", "--S", "B",
                     "--measure", "--out", str(out), "--export", "torchscript"]) == 0
    text = capsys.readouterr().out
    assert "predicted latency" in text and "measured latency" in text and "parameters" in text
    d = json.loads((out / "B.json").read_text())
    assert d["predicted_ms"] > 0 and d["measured_ms"] > 0 and set(d["op_counts"]) == {"pool", "identity", "conv"}
    scripted = torch.jit.load(str(out / "B.pt"))
    assert scripted(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    assert cli.main(["evaluate", "--search", str(search), "--retrain-epochs", "1", "--retrain-max-steps", "3",
                     "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert len(ev["rows"]) == 3 and "train 180 / val 30 / test 90" in ev["split"]["text"]

    rep = tmp_path / "report"
    assert cli.main(["report", "--search", str(search), "--fbnet", str(fbnet), "--grid", "2",
                     "--retrain-epochs", "1", "--retrain-max-steps", "3", "--front-retrain", "2", "--no-measure",
                     "--out", str(rep)]) == 0
    md = (rep / "report.md").read_text()
    assert "Split: train" in md and "| A uniform |" in md and "FBNet-style 1 (one per kappa)" in md
    assert "are within noise" in md  # the profiles' accuracies with their standard error
    report = json.loads((rep / "report.json").read_text())
    assert len(report["profiles"]) == 3 and len(report["grid"]) == 6
    assert report["searches"]["fbnet"] == 1
    for name in ("op_distribution.png", "front.png", "simplex.png"):
        assert (rep / name).stat().st_size > 1000


def test_derivation_is_deterministic_and_inherited_eval(tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, max_steps_per_epoch=2, out_dir=str(tmp_path))
    r = load_search(run_search(cfg))
    d1, d2 = derive(r, "C"), derive(r, "pool=0.70,identity=0.15,conv=0.15")
    assert d1.genotype.to_json() == d2.genotype.to_json()
    with pytest.raises(ValueError, match="unknown component"):
        derive(r, "pool=0.7,ident=0.15,conv=0.15")
    net = DiscreteNetwork(r.space, d1.genotype)
    assert count_parameters(net) == d1.params
    wn, wr = genotype_weights(r.space, d1.genotype)
    assert wn.sum() == sum(len(n) for n in d1.genotype.normal)
    from dartscc_fast.data.datasets import make_loaders
    loaders = make_loaders(limit=300, batch_size=16)
    before = {k: v.clone() for k, v in r.supernet.state_dict().items()}
    acc = inherited_accuracy(r.supernet, r.space, d1.genotype, loaders.test)
    assert 0.0 <= acc <= 1.0
    _states_equal(before, r.supernet.state_dict())  # evaluation leaves the supernet alone
    p = export_model(net, r.space, tmp_path / "m.pt")
    assert p.is_file()


@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_report_measures_every_network_at_once_in_the_tables_layout(tmp_path, monkeypatch):
    from dartscc_fast.data.datasets import make_loaders
    from dartscc_fast.evaluation import report
    from dartscc_fast.evaluation.report import make_report
    from dartscc_fast.latency import measure, profile_space
    calls = []
    real = measure.time_genotypes
    monkeypatch.setattr(report, "time_genotypes",
                        lambda space, gs, **kw: calls.append(len(gs)) or real(space, gs, **kw))
    cfg = dataclasses.replace(TINY, epochs=1, max_steps_per_epoch=2, out_dir=str(tmp_path))
    r = load_search(run_search(cfg))
    r.table = profile_space(r.space, "cpu", batch=2, threads=1, progress=False, max_seconds=0.01, min_runs=3,
                            warmup=1)
    assert r.table.memory_format == "channels_last"
    loaders = make_loaders(limit=300, batch_size=16)
    rep = make_report(r, loaders, grid_steps=1, retrain_cfg=None, front_retrain=0, random_baselines=True,
                      measure=True, threads=1, profile_rounds=1, log=lambda m: None)
    rows = rep["profiles"] + rep["grid"] + rep["baselines"]["random"] + rep["baselines"]["table"]
    assert all(p["measured_ms"] > 0 and p["predicted_ms"] > 0 for p in rows)
    # the family's architectures neither retrained nor equal to one above keep their predicted latency only
    timed = {json.dumps(p["genotype"], sort_keys=True) for p in rows}
    assert all(p["measured_ms"] is None for p in rep["family"]
               if "retrain" not in p and json.dumps(p["genotype"], sort_keys=True) not in timed)
    # one interleaved measurement of the distinct networks; equal networks share their figure
    distinct = {json.dumps(p["genotype"], sort_keys=True): p["measured_ms"] for p in rows}
    assert calls == [len(distinct)]
    assert all(distinct[json.dumps(p["genotype"], sort_keys=True)] == p["measured_ms"] for p in rows)
    assert rep["latency_table"]["memory_format"] == "channels_last"
    assert "measured_order_B<A<C" in rep["claims"]


def test_demo_measures_busy_cores_now():
    from dartscc_fast.evaluation.demo import busy_cores
    busy, how = busy_cores(0.2)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9 and how


def test_retraining_in_either_layout_trains_the_same_network():
    """channels_last (the CPU default) only changes the layout: same outputs and gradients (float64: in
    float32 the two layouts' different summation orders differ by ~1e-3 in a few gradients), same training."""
    import torch.nn.functional as F

    from dartscc_fast.data.datasets import make_loaders
    from dartscc_fast.evaluation.evaluate import RetrainConfig, accuracy, train_discrete
    from dartscc_fast.latency.measure import in_format
    from dartscc_fast.space import get_space, random_genotype
    space = get_space("fmnist-paper", C=4)
    g = random_genotype(space, torch.Generator().manual_seed(1))
    loaders = make_loaders(limit=300, batch_size=16)
    x, y = next(iter(loaders.train))
    grads, outs = [], []
    for fmt in ("channels_last", "contiguous"):
        torch.manual_seed(0)
        net = in_format(DiscreteNetwork(space, g).double(), fmt)
        xf = in_format(x.double(), fmt)
        s1 = net.cells[0](net.stem(xf), net.stem(xf))
        assert s1.is_contiguous(memory_format=torch.channels_last) != s1.is_contiguous()
        out = net(xf)
        F.cross_entropy(out, y).backward()
        outs.append(out)
        grads.append({k: p.grad for k, p in net.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-12)
    cfg = RetrainConfig(epochs=2, max_steps_per_epoch=6, progress=False)
    cl = train_discrete(space, g, loaders, cfg)
    nchw = train_discrete(space, g, loaders, dataclasses.replace(cfg, memory_format="contiguous"))
    assert accuracy(cl, loaders.test, "channels_last") == pytest.approx(accuracy(nchw, loaders.test), abs=0.03)
    with pytest.raises(ValueError, match="memory_format must be one of"):
        train_discrete(space, g, loaders, dataclasses.replace(cfg, memory_format="nhwc"))


def test_demo_checks_its_search_settings_before_profiling(tmp_path, monkeypatch):
    """A bad setting fails at once, before the minutes of profiling (which must not start)."""
    import dartscc_fast.latency as latency
    from dartscc_fast.evaluation.demo import DemoConfig
    monkeypatch.setattr(latency, "profile_space", lambda *a, **k: pytest.fail("profiled before checking"))
    for bad, words in (({"stride_balance": 2.0}, "stride_balance"), ({"normalise": "median"}, "normalise"),
                       ({"kappa": -1.0}, "kappa"), ({"epochs": 1, "warmup_epochs": 1}, "warmup_epochs")):
        with pytest.raises(ValueError, match=words):
            DemoConfig(out_dir=str(tmp_path), **bad)
        argv = ["demo", "--out", str(tmp_path)] + [f"--{k.replace('_', '-')}={v}" for k, v in bad.items()]
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's own checks (choices)
            rc = e.code
        assert rc == 2
    assert not any(tmp_path.iterdir())
    cfg = DemoConfig(out_dir=str(tmp_path), stride_balance=0.25, hypernet="mlp")
    s = cfg.search_config("table.json")
    assert (s.stride_balance, s.hypernet, s.latency_table, s.normalise) == (0.25, "mlp", "table.json", "type-stride")
    assert s.out_dir == str(tmp_path / "search")


def test_demo_decides_its_threads_again_at_each_phase(monkeypatch):
    from dartscc_fast.evaluation import demo
    loads = iter([1.5, 0.1])  # a job busy on a core as the demo starts, gone by the next phase
    monkeypatch.setattr(demo, "busy_cores", lambda: (next(loads), "stub"))
    before = torch.get_num_threads()
    try:
        cfg = demo._with_threads(demo.DemoConfig(threads=None), log=lambda m: None)
        assert cfg.threads == 1 and torch.get_num_threads() == 1
        assert demo._recheck_threads(cfg, auto=True, log=lambda m: None) == 2 and torch.get_num_threads() == 2
        # threads the user gave are kept, whatever the load
        assert demo._recheck_threads(demo.DemoConfig(threads=1), auto=False, log=lambda m: None) == 1
    finally:
        torch.set_num_threads(before)
