"""``dartscc-fast reproduce``: the seeds' protocol, scaled to a 2-core CPU, over several seeds.

For every seed, on all the shipped images: a freshly profiled latency table
(alternating thread settings, so that no figure rests on one table), one
hypernetwork search, the DARTS and FBNet-style baselines, and the report of
:mod:`dartscc_fast.evaluation.demo` (profiles A, B, C, their table-only and random
matched rivals, the family along the strength axis, all retrained). Then the
mean and standard deviation over seeds of every profile's figures and of every
part of the claim, written to ``results.md``, ``results.json`` and
``front.png``.

Resumable: a seed whose report exists is read back, and a seed cut short
continues from its latency table and its searches' checkpoints (``--resume``).
The front is recomputed from each report's retrained figures
(:func:`~dartscc_fast.evaluation.report.front_comparison`), so seeds read back
are scored by the current rule, and seeds of several runs can be pooled by
placing their directories under one ``--out``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from dartscc_fast.evaluation.demo import DemoConfig, run_demo
from dartscc_fast.evaluation.report import CLAIM_PARTS, check_claims, front_comparison, random_accuracy
from dartscc_fast.search.hypernet import PROFILES

__all__ = ["ReproduceConfig", "run_reproduce", "aggregate", "results_markdown", "saved_seeds"]


@dataclasses.dataclass
class ReproduceConfig:
    """The protocol; every size is an option. The defaults are sized for 90 minutes on 2 idle cores; the latest
    timings, on a busy machine, are in docs/results.md."""
    out_dir: str = "runs/reproduce"
    seeds: tuple = (0, 1, 2)
    limit: Optional[int] = None        # all 6,226 shipped images
    split: tuple = (0.6, 0.1, 0.3)     # 3,735 train / 622 validation / 1,869 test images
    epochs: int = 5                    # every search (the seeds' 20 do not fit: docs/results.md)
    warmup_epochs: Optional[int] = None  # None: half the epochs (SearchConfig)
    retrain_epochs: int = 3
    fbnet_kappas: tuple = (0.5, 2.0)
    darts: bool = True
    grid: int = 4
    front_retrain: int = 6             # two per baseline budget: its inherited pick and its dearest
    random_draws: int = DemoConfig.random_draws  # random architectures of matched latency per profile
    table_threads: tuple = (2, 1)      # the seeds' tables are profiled at these thread counts in turn
    threads: Optional[int] = None      # training threads (None: as the demo decides)
    kappa: Optional[float] = None      # None: the search's default
    extra_kappas: tuple = ()           # the profiles at these trade-offs too (5.0 adds 330-460 s a seed)
    kappa_max: Optional[float] = None
    strength: bool = True
    sandwich: Optional[bool] = None  # every step also trains the accurate end, t = 0 (None: with strength)
    free_op_dropout: float = DemoConfig.free_op_dropout  # P-DARTS's dropout of drawn parameter-free ops
    normalise: str = DemoConfig.normalise  # the hypernetwork search's latency pricing (docs/design.md)
    max_steps_per_epoch: Optional[int] = None
    retrain_max_steps: Optional[int] = None
    profile_seconds: float = DemoConfig.profile_seconds  # per op configuration of each seed's table
    measure: bool = True               # time every derived network (the claim's measured order)
    resume: bool = True

    def __post_init__(self):
        if not self.seeds:
            raise ValueError("reproduce needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"reproduce: seeds must differ, got {list(self.seeds)}")
        if not self.table_threads or any(int(t) < 1 for t in self.table_threads):
            raise ValueError(f"table_threads must be thread counts >= 1, got {list(self.table_threads)}")
        self.demo_config(self.seeds[0])  # the demo's and the search's own checks, before any work

    def demo_config(self, seed: int) -> DemoConfig:
        extra = {k: v for k, v in (("kappa", self.kappa), ("kappa_max", self.kappa_max)) if v is not None}
        return DemoConfig(out_dir=str(Path(self.out_dir) / f"seed{seed}"), limit=self.limit, split=tuple(self.split),
                          epochs=self.epochs, warmup_epochs=self.warmup_epochs, retrain_epochs=self.retrain_epochs,
                          fbnet_kappas=tuple(self.fbnet_kappas), darts=self.darts, grid=self.grid,
                          front_retrain=self.front_retrain, random_draws=self.random_draws, threads=self.threads,
                          seed=seed,
                          table_threads=int(self.table_threads[self.seeds.index(seed) % len(self.table_threads)]),
                          strength=self.strength, sandwich=self.sandwich, free_op_dropout=self.free_op_dropout,
                          normalise=self.normalise, extra_kappas=tuple(self.extra_kappas) if self.strength else (),
                          max_steps_per_epoch=self.max_steps_per_epoch,
                          retrain_max_steps=self.retrain_max_steps, profile_seconds=self.profile_seconds,
                          measure=self.measure, resume=self.resume, **extra)


def _sandwich(config: Dict) -> bool:
    """Whether a demo configuration ran the sandwich rule: None is the default (on with the strength axis);
    a report from before the option existed ran without."""
    on = config.get("sandwich", False)
    return bool(config.get("strength", True) and (on is None or on))


def _same_protocol(saved: Dict, cfg: DemoConfig) -> bool:
    """Whether a seed saved with ``saved`` settings is the seed ``cfg`` asks for. A run may be moved
    (``out_dir``), and a seed that also reported extra kappas serves a run asking for fewer of them."""
    want = dataclasses.asdict(cfg)
    keep = [k for k in want if k not in ("resume", "threads", "sandwich", "out_dir", "extra_kappas")]
    extras = {float(k) for k in want["extra_kappas"]} <= {float(k) for k in saved.get("extra_kappas", ())}
    # a report from before an option existed ran without it, which the comparison below would skip
    same_guards = _sandwich(saved) == _sandwich(want) and \
        float(saved.get("free_op_dropout", 0.0)) == float(want["free_op_dropout"]) and \
        int(saved.get("random_draws", 1)) == int(want["random_draws"])
    return extras and same_guards and all(
        json.dumps(saved.get(k), default=str) == json.dumps(want[k], default=str) for k in keep if k in saved)


def run_reproduce(cfg: ReproduceConfig, log=print) -> Dict:
    """Run (or continue) every seed, then aggregate; returns the results dict (also written to out_dir)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports, t0 = [], time.perf_counter()
    for i, seed in enumerate(cfg.seeds):
        dc = cfg.demo_config(seed)
        path = Path(dc.out_dir) / "report.json"
        if cfg.resume and path.is_file():
            saved = json.loads(path.read_text())
            if _same_protocol(saved.get("demo", {}).get("config", {}), dc):
                log(f"=== seed {seed} ({i + 1}/{len(cfg.seeds)}): done before, read from {path}")
                reports.append(saved)
                continue
            raise ValueError(f"{path} was written with other settings; use another --out, or delete it")
        log(f"=== seed {seed} ({i + 1}/{len(cfg.seeds)}), table at {dc.table_threads} threads "
            f"({time.perf_counter() - t0:.0f} s so far)")
        reports.append(json.loads(json.dumps(run_demo(dc, log=log), default=str)))
    results = aggregate(reports)
    kappas = sorted({k for r in reports for k in r.get("at_kappa", {})}, key=float)
    results["at_kappa"] = {k: aggregate([r["at_kappa"][k] for r in reports if k in r.get("at_kappa", {})])
                           for k in kappas}
    results["kappa"] = (reports[0]["search"]["config"].get("kappa") if reports else None)
    results["config"] = dataclasses.asdict(cfg)
    results["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "results.md").write_text("# dartscc_fast reproduce\n\n" + results_markdown(results))
    try:
        plot_fronts(reports, out / "front.png")
    except ImportError:
        log("matplotlib is not installed: plot skipped (pip install matplotlib)")
    log(results_markdown(results))
    log(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'front.png'}")
    return results


# ------------------------------------------------------------------------------ statistics
def saved_seeds(runs: Sequence) -> List[Tuple[Path, Dict]]:
    """``(seed directory, its report)`` for every seed of these ``reproduce`` output directories that has a
    report, in order of path."""
    dirs = sorted(d for run in runs for d in Path(run).glob("seed*") if (d / "report.json").is_file())
    return [(d, json.loads((d / "report.json").read_text())) for d in dirs]


def mean_sd(values: Sequence[Optional[float]]) -> Dict:
    """``{"mean", "sd", "se", "n"}`` of the values given (None left out); sd is the sample standard deviation."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None, "se": None, "n": 0}
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": m, "sd": sd, "se": sd / math.sqrt(len(v)), "n": len(v)}


def _by(rows: List[Dict], key: str) -> Dict:
    return {r[key]: r for r in rows}


def aggregate(reports: List[Dict]) -> Dict:
    """Mean and sd over the seeds' reports: per profile, per claim part, the front and the coverage."""
    profiles = {}
    for name in PROFILES:
        rows = [_by(r["profiles"], "label")[name] for r in reports]
        tables = [_by(r["baselines"].get("table", []), "matched").get(name, {}) for r in reports]
        randoms = [{"test_acc": random_accuracy(r, name)} for r in reports]  # the mean of its draws
        learned = [r.get("learned", {}).get(name, {}) for r in reports]
        pct = lambda rs: [None if x.get("test_acc") is None else 100 * x["test_acc"] for x in rs]  # noqa: E731
        profiles[name] = {
            "test_acc": mean_sd(pct(rows)), "table_acc": mean_sd(pct(tables)), "random_acc": mean_sd(pct(randoms)),
            "over_table": mean_sd([x.get("over_table") for x in learned]),
            "over_random": mean_sd([x.get("over_random") for x in learned]),
            "edges_changed": mean_sd([x.get("edges_changed") for x in learned]),
            "params": mean_sd([x["params"] for x in rows]),
            "predicted_ms": mean_sd([x["predicted_ms"] for x in rows]),
            "measured_ms": mean_sd([x.get("measured_ms") for x in rows]),
            **{t: mean_sd([x["op_counts"][t] for x in rows]) for t in ("pool", "identity", "conv")},
            "stride1_conv": mean_sd([(x.get("stride1_ops") or {}).get("conv") for x in rows]),
        }
    per_seed = [check_claims(r) for r in reports]  # recomputed, so seeds saved before a part existed count too
    parts = sorted({k for c in per_seed for k in c})
    claims = {k: sum(bool(c.get(k)) for c in per_seed) for k in parts}
    whole = sum(all(c[k] for k in CLAIM_PARTS if k in c) for c in per_seed)
    # a part a seed could not score (the measured order of a seed run with --no-measure) is left out of its
    # whole claim; the count says how often, so that the row is not read as every part in every seed
    unscored = {k: sum(k not in c for c in per_seed) for k in CLAIM_PARTS if any(k not in c for c in per_seed)}
    c_best = profiles["C"]["test_acc"]["mean"] is not None and profiles["C"]["test_acc"]["mean"] >= max(
        profiles[n]["test_acc"]["mean"] or 0 for n in PROFILES)
    front: Dict[str, List] = {}
    for r in reports:
        fr = front_comparison(r) if all(k in r for k in ("grid", "profiles", "baselines", "searches")) \
            else r.get("front", {})
        for row in fr.get("rows", []):
            diff = None if row["family_acc"] is None else 100 * (row["family_acc"] - row["acc"])
            front.setdefault(row["baseline"], []).append(diff)
    cov = [r.get("coverage", {}) for r in reports]
    accurate_end = []
    for r in reports:
        fam = [f for f in r.get("family", []) if f.get("kappa") == 0.0]
        accurate_end.append(max(((f.get("stride1_ops") or {}).get("conv", 0) for f in fam), default=None))
    return {
        "seeds": len(reports), "profiles": profiles, "claims": claims, "claims_of": len(reports),
        "claim_whole": whole, "claim_whole_unscored": unscored,
        "C_best_acc_in_mean": c_best,
        "front": {b: {**mean_sd(d), "missing": sum(x is None for x in d)} for b, d in front.items()},
        "coverage": {"reaches_cheapest": sum(bool(c.get("reaches_cheapest")) for c in cov),
                     "reaches_darts": sum(bool(c.get("reaches_darts")) for c in cov),
                     "family_min_ms": mean_sd([c.get("family_min_ms") for c in cov]),
                     "family_max_ms": mean_sd([c.get("family_max_ms") for c in cov]),
                     "cheapest_ms": mean_sd([c.get("cheapest_ms") for c in cov]),
                     "darts_ms": mean_sd([c.get("darts_ms") for c in cov])},
        "accurate_end_stride1_conv": accurate_end,
        "searches_per_seed": reports[0].get("searches", {}) if reports else {},
        "split": reports[0].get("split_text") if reports else None,
    }


def _ms(s: Dict, digits: int = 1) -> str:
    if s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def results_markdown(res: Dict) -> str:
    """The aggregate as Markdown tables (mean ± sd over the seeds), at the search's kappa and any others."""
    n = res["seeds"]
    lines = [f"{n} seeds, each with its own freshly profiled latency table. Split per seed: {res.get('split')}.",
             "Mean ± sd over the seeds; accuracy in %, retrained from scratch; differences in points.", ""]
    lines += [f"## Profiles at kappa {res.get('kappa', '?')}", ""] + _profile_lines(res)
    for k, sub in (res.get("at_kappa") or {}).items():
        which = "" if sub["seeds"] == n else f", {sub['seeds']} of the {n} seeds"  # read-back seeds may add extras
        lines += ["", f"## Profiles at kappa {k} (same searches{which})", ""] + _profile_lines(sub)
    return "\n".join(lines) + "\n"


def _profile_lines(res: Dict) -> List[str]:
    n = res["seeds"]
    lines = ["| profile | test acc | table-only acc | random acc | over table-only | over random | edges vs table "
             "| params | predicted ms | measured ms | pool | identity | conv | stride-1 conv |",
             "| --- " * 14 + "|"]
    for name, p in res["profiles"].items():
        lines.append(f"| {name} | {_ms(p['test_acc'])} | {_ms(p['table_acc'])} | {_ms(p['random_acc'])} "
                     f"| {_ms(p['over_table'])} | {_ms(p['over_random'])} | {_ms(p['edges_changed'])} "
                     f"| {_ms(p['params'], 0)} | {_ms(p['predicted_ms'])} | {_ms(p['measured_ms'])} "
                     f"| {_ms(p['pool'])} | {_ms(p['identity'])} | {_ms(p['conv'])} | {_ms(p['stride1_conv'])} |")
    draws = (res.get("config") or {}).get("random_draws")
    lines += ["", f"(random: in each seed the mean of the {draws or 'one or more'} random architectures closest to the "
              "profile's predicted latency)"]
    lines += ["", "### The claim, seed by seed", "", "| part | seeds where it held |", "| --- | --- |"]
    lines += [f"| {k} | {v} of {res['claims_of']} |" for k, v in res["claims"].items()]
    lines.append(f"| C the most accurate in the mean over seeds | {'yes' if res['C_best_acc_in_mean'] else 'no'} |")
    if "claim_whole" in res:
        gaps = "".join(f"; {k} not scored in {v} (left out there)"
                       for k, v in res.get("claim_whole_unscored", {}).items())
        lines.append(f"| the whole claim ({', '.join(CLAIM_PARTS)}) | {res['claim_whole']} of "
                     f"{res['claims_of']}{gaps} |")
    s = res.get("searches_per_seed", {})
    lines += ["", f"### Front: family (1 search per seed) minus each baseline (1 search each per seed: "
                  f"{s.get('fbnet', 0)} FBNet-style, {s.get('darts', 0)} DARTS), at no more predicted latency", "",
              "| baseline | family - baseline, points | SE of the mean | seeds without a family point |",
              "| --- | --- | --- | --- |"]
    for b, f in res["front"].items():
        se = "-" if f["se"] is None else f"{f['se']:.1f}"
        lines.append(f"| {b} | {_ms(f)} | {se} | {f['missing']} |")
    c = res["coverage"]
    lines += ["", f"Coverage: family predicted latency {_ms(c['family_min_ms'])} to {_ms(c['family_max_ms'])} ms; "
                  f"the space's cheapest {_ms(c['cheapest_ms'])} ms, DARTS {_ms(c['darts_ms'])} ms. Reaches the "
                  f"cheapest in {c['reaches_cheapest']} of {n} seeds, the DARTS latency in "
                  f"{c['reaches_darts']} of {n}.",
              "", f"Stride-1 convolutions at the accurate end (kappa 0, most over the simplex grid), per seed: "
                  f"{res['accurate_end_stride1_conv']}."]
    return lines


def plot_fronts(reports: List[Dict], path: Path) -> Path:
    """Every seed's retrained points: the family, the per-kappa searches, DARTS, table-only and random."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = "predicted_ms"
    n = len(reports)
    groups = {"family": [], "fbnet": [], "darts": [], "table": [], "random": []}
    for r in reports:
        groups["family"] += [q for q in r["grid"] + r.get("family", []) + r["profiles"] if "retrain" in q]
        for k in ("fbnet", "darts", "table", "random"):
            groups[k] += r["baselines"].get(k, [])
    s = reports[0].get("searches", {}) if reports else {}
    style = {"family": ("C0", "o", "hypernetwork family (1 search per seed)"),
             "fbnet": ("C1", "s", f"FBNet-style ({s.get('fbnet', 0)} searches per seed)"),
             "darts": ("C3", "^", f"DARTS ({s.get('darts', 0)} search per seed)"),
             "table": ("C2", "D", "table-only (no search)"), "random": ("gray", "x", "random, matched latency")}
    for k, pts in groups.items():
        pts = [q for q in pts if q.get(x) is not None and q.get("test_acc") is not None]
        if pts:
            c, m, label = style[k]
            ax.scatter([q[x] for q in pts], [100 * q["test_acc"] for q in pts], c=c, marker=m, label=label, s=22)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("test accuracy, retrained (%)")
    ax.set_title(f"Accuracy vs latency, {n} seeds", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
