"""``dartscc-fast demo``: the whole method on the shipped data, on this CPU, in minutes.

1. profile the latency of every op configuration of the space on this CPU;
2. one hypernetwork search (every S at once);
3. the baselines: DARTS (no latency term) and FBNet-style searches, one per kappa;
4. derive A, B, C and a grid over the simplex, evaluate (inherited weights,
   retrained from scratch), measure their latency, and compare with the baselines;
5. print the table and write report.md, report.json and the plots.

The defaults are sized for a 2-core CPU and a 15-minute budget; every size is
an option (``--limit``, ``--epochs``, ``--retrain-epochs``, ``--fbnet-kappas``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from dartscc_fast.evaluation.evaluate import RetrainConfig, baseline_config
from dartscc_fast.evaluation.report import RANDOM_DRAWS, make_report, markdown, write_report
from dartscc_fast.latency import STRIDE_BALANCE, LatencyTable, profile_space
from dartscc_fast.latency.measure import busy_cores
from dartscc_fast.search import TABLE_BATCH, SearchConfig, load_search, run_search
from dartscc_fast.space import get_space
from dartscc_fast.validate import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STEPS, Int, check_fields

__all__ = ["DemoConfig", "run_demo"]


@dataclasses.dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    space: str = "fmnist-paper"
    limit: Optional[int] = 4000        # images of the shipped 6,226 to use (None: all)
    # 1,400 train / 300 validation / 2,300 test: the searches and retraining see as few images as the time
    # allows, and every accuracy is measured on enough to tell architectures apart (standard error about
    # 0.95 points at 70 %, against 2.6 on a 300-image test part). All 6,226 (4,514 test) took 827 s in all.
    split: tuple = (0.35, 0.075, 0.575)
    epochs: int = 4                    # every search: hypernetwork, DARTS, each FBNet kappa
    warmup_epochs: Optional[int] = None  # of which the weights train alone on uniform architectures (None: half)
    # The latency term: 'type-stride' normalisation (balance 0.5), the strength axis, S per sample (DARTS-CC);
    # why each, and the searches behind them: docs/design.md
    kappa: float = SearchConfig.kappa          # the profiles' trade-off on the strength axis
    kappa_max: float = SearchConfig.kappa_max  # the strength axis's strongest latency weight
    strength: bool = True                      # False: one fixed kappa, as the seeds (docs/design.md)
    sandwich: Optional[bool] = None            # every step also trains the accurate end (None: with strength)
    free_op_dropout: float = SearchConfig.free_op_dropout  # P-DARTS's dropout of drawn parameter-free ops
    normalise: str = "type-stride"
    stride_balance: float = STRIDE_BALANCE
    per_sample: bool = True
    fbnet_kappas: tuple = (0.5, 1.5, 4.0)   # fixed-kappa searches spanning several convolutions to none
    darts: bool = True
    # 2 epochs left the networks far from trained (A/B/C 71/72/63 %, the conv-heavy C least); 4 gave
    # 80/80/78 % and 6 gave 82/82/81 % for the same genotypes: 4 fits the demo's 15 minutes.
    retrain_epochs: int = 4
    grid: int = 4
    front_retrain: int = 6              # two per baseline budget where they fit (report.front_picks)
    random_draws: int = RANDOM_DRAWS    # random architectures of matched latency retrained per profile
    threads: Optional[int] = None      # None: 2 idle, 1 when other work keeps a core busy; decided at each phase
    table_threads: Optional[int] = None  # threads the latency table is profiled and networks timed at (None: threads)
    retrain_max_steps: Optional[int] = None  # cap on each retraining epoch's steps (tiny runs, CI)
    resume: bool = False               # reuse out_dir's latency table and continue its searches from their checkpoints
    # with the strength axis: also report the profiles at these trade-offs (under out_dir/kappa<k>), from the
    # same searches, retraining only the architectures the main report did not
    extra_kappas: tuple = ()
    profile_seconds: float = 0.15      # per op configuration
    latency_table: Optional[str] = None  # reuse a table instead of profiling
    seed: int = 0
    hypernet: Optional[str] = None
    max_steps_per_epoch: Optional[int] = None
    measure: bool = True

    def __post_init__(self):
        check_fields(self, {"retrain_epochs": NON_NEGATIVE_INT, "grid": POSITIVE_INT, "front_retrain": NON_NEGATIVE_INT,
                            "random_draws": POSITIVE_INT,
                            "threads": Int(1, optional=True, none="by the machine's load"),
                            "table_threads": Int(1, optional=True, none="threads"), "retrain_max_steps": STEPS,
                            "profile_seconds": POSITIVE})
        for k in self.fbnet_kappas:
            NON_NEGATIVE("DemoConfig.fbnet_kappas (each)", k)
        base = self.search_config()  # the search's own checks (kappa, normalisation, split, ...) before any profiling
        for k in self.extra_kappas:
            dataclasses.replace(base, kappa=float(k))  # each on the strength axis

    def search_config(self, latency_table: Optional[str] = None) -> SearchConfig:
        """The hypernetwork search's configuration (writing under ``out_dir``/search)."""
        base = SearchConfig(space=self.space, limit=self.limit, split=tuple(self.split), epochs=self.epochs,
                            warmup_epochs=self.warmup_epochs, kappa=self.kappa, kappa_max=self.kappa_max,
                            strength=self.strength, sandwich=self.sandwich,
                            free_op_dropout=self.free_op_dropout, normalise=self.normalise,
                            stride_balance=self.stride_balance, per_sample=self.per_sample, seed=self.seed,
                            latency_table=latency_table, out_dir=str(Path(self.out_dir) / "search"),
                            max_steps_per_epoch=self.max_steps_per_epoch)
        return dataclasses.replace(base, hypernet=self.hypernet) if self.hypernet else base


def run_demo(cfg: DemoConfig, log=print) -> Dict:
    """Run the demo; returns the report dict (also written under ``cfg.out_dir``)."""
    auto = cfg.threads is None
    cfg = _with_threads(cfg, log)
    measure_threads = cfg.table_threads or cfg.threads  # the table's, whatever the training threads become
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}
    t_all = t = time.perf_counter()
    table, table_path = _latency_table(cfg, get_space(cfg.space), out, log)
    times["profile"] = time.perf_counter() - t

    base = cfg.search_config(table_path)
    loaders = base.loaders()
    log(f"      data: {loaders.split}")
    threads = {"profile": cfg.threads}
    t = time.perf_counter()
    threads["search"] = _recheck_threads(cfg, auto, log)
    result = _hypernet_search(cfg, base, loaders, table, log)
    times["search"] = time.perf_counter() - t
    t = time.perf_counter()
    threads["baselines"] = _recheck_threads(cfg, auto, log)
    runs = _baseline_searches(cfg, base, loaders, table, log)
    times["baselines"] = time.perf_counter() - t

    t = time.perf_counter()
    threads["evaluate"] = _recheck_threads(cfg, auto, log)
    report = _reports(cfg, result, loaders, runs, out, measure_threads, log)
    times["evaluate"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_all
    report["demo"] = {"config": dataclasses.asdict(cfg), "seconds": times, "latency_table_path": table_path,
                      "threads": threads}

    log("[5/5] report")
    paths = write_report(report, out)
    log("")
    log(markdown(report))
    for k, v in paths.items():
        log(f"{k}: {v}")
    log("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return report


def _with_threads(cfg: DemoConfig, log) -> DemoConfig:
    """``cfg`` with its training threads decided (when not given) and set in torch."""
    if cfg.threads is None:
        # oversubscribed OpenMP barriers cost far more than the second core gains (docs/design.md)
        busy, how = busy_cores()
        cfg = dataclasses.replace(cfg, threads=1 if busy > 0.75 else 2)
        log(f"      threads: {cfg.threads} ({busy:.1f} of {os.cpu_count()} CPUs busy, {how})")
    torch.set_num_threads(cfg.threads)
    return cfg


def _recheck_threads(cfg: DemoConfig, auto: bool, log) -> int:
    """The training threads for the next phase: decided again from the load when the user gave none, so a
    short job running as the demo started does not keep a whole seed at one thread."""
    return _with_threads(dataclasses.replace(cfg, threads=None) if auto else cfg, log).threads


def _latency_table(cfg: DemoConfig, space, out: Path, log) -> Tuple[LatencyTable, str]:
    """The table given, the one a resumed demo made before, or a fresh profile of this CPU."""
    table_threads = cfg.table_threads or cfg.threads
    own_table = out / "latency_table.json"
    if cfg.latency_table or (cfg.resume and own_table.is_file()):
        table_path = cfg.latency_table or str(own_table)
        table = LatencyTable.load(table_path)
        log(f"[1/5] latency table: {table_path} ({len(table)} entries, device {table.device})")
        return table, table_path
    log(f"[1/5] profiling {space.name} on this CPU ({table_threads} threads, batch {TABLE_BATCH})")
    table = profile_space(space, "cpu", batch=TABLE_BATCH, threads=table_threads,
                          max_seconds=cfg.profile_seconds, min_runs=5)
    torch.set_num_threads(cfg.threads)
    table.save(str(own_table))
    return table, str(own_table)


def _hypernet_search(cfg: DemoConfig, base: SearchConfig, loaders, table, log):
    axis = f"kappa 0-{base.kappa_max:g}, profiles at {base.kappa:g}" if base.strength else f"kappa {base.kappa:g}"
    log(f"[2/5] hypernetwork search ({base.hypernet}, {axis}, {base.epochs} epochs, "
        f"S per {'sample' if base.per_sample else 'batch'})")
    # without --resume, a demo replaces the searches of the last one in out_dir (as it redoes all the rest)
    return load_search(run_search(base, resume=cfg.resume, loaders=loaders, table=table, force=not cfg.resume))


def _baseline_searches(cfg: DemoConfig, base: SearchConfig, loaders, table, log) -> Dict[str, List]:
    runs: Dict[str, List] = {"darts": [], "fbnet": []}
    plans = ([("darts", 0.0)] if cfg.darts else []) + [("fbnet", k) for k in cfg.fbnet_kappas]
    for i, (kind, kappa) in enumerate(plans):
        bc = baseline_config(base, kind, kappa)
        log(f"[3/5] baseline search {i + 1}/{len(plans)}: {kind}" + (f" kappa {kappa:g}" if kind == "fbnet" else ""))
        runs[kind].append(load_search(run_search(bc, resume=cfg.resume, loaders=loaders, table=table,
                                                 force=not cfg.resume)))
    return runs


def _reports(cfg: DemoConfig, result, loaders, runs: Dict[str, List], out: Path, measure_threads: int,
             log) -> Dict:
    """The report at the search's kappa, and one per ``extra_kappas`` (under ``out/kappa<k>``), sharing
    every retrained and timed architecture."""
    log(f"[4/5] deriving and evaluating A, B, C, the simplex grid (1/{cfg.grid}) and the baselines")
    rc = RetrainConfig(epochs=cfg.retrain_epochs, seed=cfg.seed, max_steps_per_epoch=cfg.retrain_max_steps) \
        if cfg.retrain_epochs > 0 else None
    cache: Dict = {}
    kw = dict(measure=cfg.measure, threads=measure_threads, log=lambda m: log("      " + m),
              cache=cache, random_draws=cfg.random_draws)
    report = make_report(result, loaders, runs, cfg.grid, rc, cfg.front_retrain, **kw)
    extra = {}
    for kappa in cfg.extra_kappas if result.has_strength else ():
        log(f"      the profiles at kappa {kappa:g} as well")
        at = dataclasses.replace(result, config=dataclasses.replace(result.config, kappa=float(kappa)))
        extra[f"{kappa:g}"] = make_report(at, loaders, runs, cfg.grid, rc, cfg.front_retrain, **kw)
        write_report(extra[f"{kappa:g}"], out / f"kappa{kappa:g}")
    if extra:
        report["at_kappa"] = extra
    return report
