"""Runtimes a table is measured on: eager torch and ONNX Runtime (per op, in context, whole networks),
the table's record of them, and bench/check_latency_prediction.py on a few architectures."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import QUICK_PROFILE, needs_ort, needs_ov

from dartscc_fast.cli import main
from dartscc_fast.latency import LatencyTable, LatencyTableError, profile_space, space_configs, time_genotype
from dartscc_fast.latency.measure import (
    build_base_network,
    build_context_network,
    build_network,
    network_input,
    time_genotypes,
)
from dartscc_fast.latency.runtimes import RUNTIMES, RuntimeUnavailable, get_runtime
from dartscc_fast.space import get_space, random_genotype

TINY = get_space("fmnist-paper", C=4, input_size=8)
RUNTIME_PARAMS = ["torch", pytest.param("onnxruntime", marks=needs_ort), pytest.param("openvino", marks=needs_ov)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.filterwarnings("ignore:the machine is busy")


def test_get_runtime_checks_its_arguments():
    assert set(RUNTIMES) >= {"torch", "onnxruntime"}
    with pytest.raises(ValueError, match="unknown runtime 'tvm'; known: torch, onnxruntime, openvino"):
        get_runtime("tvm")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        get_runtime("torch", threads=0)
    rt = get_runtime("torch", threads=1)
    assert rt.name == "torch" and rt.meta()["runtime_version"] == torch.__version__
    with pytest.raises(ValueError, match="unknown runtime"):
        profile_space(TINY, runtime="tvm", **QUICK_PROFILE)


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS[1:])
def test_graph_runtimes_compute_what_torch_computes(runtime):
    g = random_genotype(TINY, torch.Generator().manual_seed(0))
    net, x = build_network(TINY, g), network_input(TINY, 2)
    y = get_runtime(runtime, threads=1).prepare(net, x)()[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), net(x), rtol=1e-4, atol=1e-4)


@needs_ort
def test_onnxruntime_records_how_it_ran():
    rt = get_runtime("onnxruntime", threads=1)
    m = rt.meta()
    assert m["runtime"] == "onnxruntime" and m["provider"] == "CPUExecutionProvider"
    assert "ORT_ENABLE_ALL" in m["optimisation"] and m["runtime_version"]
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeUnavailable, match="no CUDAExecutionProvider here.*onnxruntime-gpu"):
            get_runtime("onnxruntime", "cuda", 1)


def test_context_network_runs_the_op_on_every_edge_of_its_configuration():
    cfg = space_configs(TINY, 2)[0]  # sep_conv_3x3 on the first normal cell's shape
    net, n = build_context_network(TINY, cfg)
    edges = [e for e in TINY.edges() if (e.C, e.H, e.W, e.stride) == (cfg.cin, cfg.h, cfg.w, cfg.stride)]
    assert n == len(edges) > 0
    base = build_base_network(TINY, "all")
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(net) > n_params(base)
    x = network_input(TINY, 2)
    with torch.no_grad():
        assert net(x).shape == base(x).shape


@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_table_round_trips_with_its_runtime(tmp_path, capsys, runtime):
    t = profile_space(TINY, runtime=runtime, **QUICK_PROFILE)
    assert len(t) == len(space_configs(TINY, 2)) + 2
    m = t.meta
    assert t.runtime == m["runtime"] == runtime and m["threads"] == 1
    assert m["op_timing"] == ("isolated" if runtime == "torch" else "in context")
    assert {"runtime_version", "provider", "optimisation", "load_average", "busy_cpus", "governor"} <= set(m)
    if runtime != "torch":
        assert t.memory_format == "contiguous" and "ONNX" in m["method"]
        e = t.entries[space_configs(TINY, 2)[0].key()]
        assert e["edges"] >= 1 and e["context_median"] > 0 and e["median"] >= 0
    path = tmp_path / "t.json"
    t.save(path)
    back = LatencyTable.load(path)
    assert back.runtime == runtime and back.entries == t.entries and back.meta == json.loads(json.dumps(m))
    assert main(["table", "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"runtime {runtime} {m['runtime_version']}" in shown and f"provider {m['provider']}" in shown
    assert "ops timed " + m["op_timing"] in shown and "governor" in shown
    g = random_genotype(TINY, torch.Generator().manual_seed(0))
    assert back.predict(TINY, g) > 0


@needs_ort
def test_whole_network_onnxruntime_timing_and_runtimes_do_not_merge():
    gen = torch.Generator().manual_seed(1)
    gs = [random_genotype(TINY, gen) for _ in range(2)]
    tm = time_genotype(TINY, gs[0], batch=2, threads=1, runtime="onnxruntime", max_seconds=0.02, min_runs=3)
    assert tm.median > 0 and tm.runs >= 3
    ts = time_genotypes(TINY, gs, batch=2, threads=1, rounds=2, runs=2, runtime="onnxruntime", clock="thread")
    assert all(t.runs == 4 and t.median > 0 for t in ts)
    ort = profile_space(TINY, runtime="onnxruntime", in_context=False, include_base=False, **QUICK_PROFILE)
    assert ort.meta["op_timing"] == "isolated"
    eager = profile_space(TINY, include_base=False, **QUICK_PROFILE)
    with pytest.raises(LatencyTableError, match="different runtimes"):
        eager.merge(ort)


def test_thread_clock_needs_one_thread_on_the_calling_thread():
    g = random_genotype(TINY, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="clock='thread'"):
        time_genotypes(TINY, [g], batch=2, threads=2, rounds=1, runs=1, clock="thread")


def test_profile_cli_takes_the_runtime(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["profile", "--space", "fmnist-paper", "--batch", "1", "--threads", "1", "--max-seconds", "0.01",
            "--out", str(out), "--quiet", "--isolated"]
    assert main(args + ["--calibrate", "3"]) == 0
    t = LatencyTable.load(out)
    assert t.meta["op_timing"] == "isolated" and t.meta["calibration"]["networks"] == 3
    assert main(["table", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "calibration: predict = base + " in shown and "lookups read each entry's median run" in shown
    fast = tmp_path / "fast.json"
    assert main(["table", "calibrate", str(out), "--networks", "3", "--statistic", "min", "--out", str(fast)]) == 0
    assert "min runs" in capsys.readouterr().out
    t = LatencyTable.load(fast)
    assert t.statistic == "min" and t.meta["calibration"]["statistic"] == "min"
    again = tmp_path / "again.json"
    assert main(["table", "calibrate", str(out), "--networks", "4", "--out", str(again)]) == 0
    assert "calibration offset" in capsys.readouterr().out
    assert LatencyTable.load(again).meta["calibration"]["networks"] == 4
    assert LatencyTable.load(out).meta["calibration"]["networks"] == 3   # --out leaves the input as it was
    with pytest.raises(SystemExit):
        main(args + ["--runtime", "tvm"])


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIME_PARAMS)
def test_check_latency_prediction_on_five_architectures(tmp_path, runtime):
    sample = "mixed" if runtime == "torch" else "uniform"
    table = tmp_path / "t.json"
    profile_space(get_space("fmnist-paper"), batch=2, threads=1, progress=False, max_seconds=0.02, min_runs=3,
                  warmup=1, runtime=runtime).save(table)
    out, png = tmp_path / "check.json", tmp_path / "check.png"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "check_latency_prediction.py"), "--table",
                        str(table), "--n", "5", "--rounds", "1", "--runs", "2", "--refit", "2", "--retest", "--json",
                        str(out), "--plot", str(png), "--sample", sample], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])))
    assert r.returncode == 0, r.stderr
    assert "kendall_tau" in r.stdout and "within10_%" in r.stdout and png.stat().st_size > 0
    res = json.loads(out.read_text())
    assert len(res["measured"]) == 5 and all(m > 0 for m in res["measured"])
    for k in ("kendall_tau", "mape", "within_10", "within_5"):
        assert k in res["results"]["table"] and k in res["results"]["+offset(2)"] and k in res["results"]["retest"]
    assert res["table_meta"]["runtime"] == runtime and res["sample"] == sample
    # the same runs read by the fastest run too, paired with the table's median
    assert res["statistic"] == "median" and res["results_other_statistic"]["statistic"] == "min"
    assert "retest" in res["results_other_statistic"]["results"] and len(res["retest_min"]) == 5
    assert all(lo <= m for lo, m in zip(res["measured_min"], res["measured"]))
    assert "kendall_tau" in res["results_fastest_of_both"]["table"]  # --retest: against the faster timing too
    # a graph runtime's ops in context split shared work: the per-edge averages are scored on the same runs
    assert ("results_per_edge_average" in res) == (runtime != "torch")


def test_calibration_fits_whole_networks_and_predict_applies_it():
    t = profile_space(TINY, calibrate_networks=4, **QUICK_PROFILE)
    cal = t.meta["calibration"]
    assert cal["networks"] == 4 and cal["space"] == TINY.name and cal["scale"] > 0
    assert t.calibration() == (cal["scale"], cal["offset_ms"])
    g = random_genotype(TINY, torch.Generator().manual_seed(7))
    ops, base = t.predict(TINY, g, include_base=False), t.base(TINY, g)
    assert t.predict(TINY, g) == pytest.approx(cal["scale"] * ops + base + cal["offset_ms"])
    t.meta.pop("calibration")
    assert t.calibration() == (1.0, 0.0) and t.predict(TINY, g) == pytest.approx(ops + base)
    from dartscc_fast.latency.measure import calibrate
    with pytest.raises(ValueError, match="at least 3 networks"):
        calibrate(t, TINY, networks=2)
