"""The machine's pace (dartscc_fast.latency.pace): probes of the anchor beside every block of runs, the
runs scaled to a reference pace, and a paced table's record of both."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dartscc_fast.latency import LatencyTable, LatencyTableError, profile_space
from dartscc_fast.latency import pace as pace_mod
from dartscc_fast.latency.keys import device_token
from dartscc_fast.latency.measure import _profile_jobs, calibrate, time_genotypes
from dartscc_fast.space import get_space, random_genotype

TINY = get_space("fmnist-paper", C=4, input_size=8)
QUICK = dict(batch=2, threads=1, progress=False, max_seconds=0.01, min_runs=3, warmup=1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_scale_brings_runs_to_the_reference_pace():
    assert pace_mod.scale([2.0, 4.0], ref_ms=10.0, pace_ms=20.0) == [1.0, 2.0]  # a slow stretch, scaled down
    assert pace_mod.paced_runs([([1.0], 5.0), ([3.0], 20.0)], ref_ms=10.0) == [2.0, 1.5]
    with pytest.raises(ValueError, match="paces must be > 0"):
        pace_mod.scale([1.0], ref_ms=10.0, pace_ms=0.0)
    with pytest.raises(ValueError, match="no probe"):
        pace_mod.Pace(lambda: 1.0).ref_ms()
    assert pace_mod.table_ref_ms({}) is None and pace_mod.table_ref_ms({"pace": {"anchor_ms": 3.0}}) == 3.0


@pytest.fixture
def fake_probes(monkeypatch):
    """Probes that read 10, 11, 12, ... ms, whatever the machine does: the scaling becomes exact."""
    seen = []
    count = itertools.count()

    def probe(self):
        v = 10.0 + next(count)
        self.probes.append(v)
        seen.append(v)
        return v

    monkeypatch.setattr(pace_mod.Pace, "probe", probe)
    return seen


@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_profile_scales_each_configuration_by_the_probes_around_it(fake_probes):
    t = profile_space(TINY, pace=True, **QUICK)
    jobs = _profile_jobs([TINY], 2, "float32", device_token("cpu"), True)
    assert len(fake_probes) == len(jobs) + 1  # one before the first configuration, one after each
    ref = float(np.median(fake_probes))
    assert t.meta["pace"]["anchor_ms"] == ref and t.meta["pace"]["probes"] == len(jobs) + 1
    for j, (cfg, _) in enumerate(jobs):
        e = t.entries[cfg.key()]
        factor = ref / ((fake_probes[j] + fake_probes[j + 1]) / 2)
        assert e["min"] == pytest.approx(e["unpaced"]["min"] * factor)
        assert e["median"] == pytest.approx(e["unpaced"]["median"] * factor)
    raw = t.unpaced()
    assert "pace" not in raw.meta and all("unpaced" not in e for e in raw.entries.values())
    assert all(raw.entries[k]["min"] == e["unpaced"]["min"] for k, e in t.entries.items())
    with pytest.raises(LatencyTableError, match="not paced"):
        raw.unpaced()
    assert LatencyTable.from_dict(json.loads(json.dumps(t.to_dict()))).meta["pace"] == t.meta["pace"]  # round trip


@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_time_genotypes_probes_before_every_round_and_after_the_last():
    gs = [random_genotype(TINY, torch.Generator().manual_seed(s)) for s in range(2)]
    probes = []
    ts = time_genotypes(TINY, gs, batch=2, threads=1, rounds=3, runs=1, pace=probes)
    assert len(ts) == 2 and all(t.runs == 3 for t in ts)  # the anchor is not among the networks
    assert len(probes) == 4 and all(p > 0 for p in probes)


@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_a_paced_table_calibrates_at_its_pace_and_merges_without_one(monkeypatch):
    t = profile_space(TINY, pace=True, **QUICK)
    assert calibrate(t, TINY, networks=3, rounds=1, runs=1)["paced"] is True
    offset = t.meta["calibration"]["offset_ms"]
    # the networks seen at twice the table's pace (half its time): scaled up to it, the offset grows
    def fast_probe(self):
        self.probes.append(t.meta["pace"]["anchor_ms"] / 2)
        return self.probes[-1]

    monkeypatch.setattr(pace_mod.Pace, "probe", fast_probe)
    calibrate(t, TINY, networks=3, rounds=1, runs=1)
    assert t.meta["calibration"]["offset_ms"] > offset
    plain = profile_space(TINY, **QUICK)
    assert calibrate(plain, TINY, networks=3, rounds=1, runs=1)["paced"] is False
    assert "pace" not in t.merge(plain, on_conflict="first").meta  # entries at two paces: no one to scale to


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the machine is busy")
def test_check_latency_prediction_scores_the_paced_pairs(tmp_path):
    table = tmp_path / "t.json"
    profile_space(get_space("fmnist-paper"), pace=True, **dict(QUICK, max_seconds=0.02)).save(table)
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "check_latency_prediction.py"), "--table",
                        str(table), "--n", "4", "--rounds", "1", "--runs", "1", "--chunk", "2", "--refit", "2",
                        "--retest", "--json", str(out), "--plot", ""], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])))
    assert r.returncode == 0, r.stderr
    assert "the table against the paced measurement" in r.stdout and "the unpaced table" in r.stdout
    res = json.loads(out.read_text())
    assert len(res["pace"]) == 4 and len(set(res["pace"])) <= 2  # one pace per chunk
    ref = res["table_meta"]["pace"]["anchor_ms"]
    for m, p, paced in zip(res["measured"], res["pace"], res["measured_paced"]):
        assert paced == pytest.approx(m * ref / p)  # the table reads the median: so does the paced figure
    for k in ("results_paced_measurement", "results_unpaced_table", "results_unpaced_table_paced_measurement"):
        assert "kendall_tau" in res[k]["table"]
    assert "retest" in res["results_paced_measurement"]
