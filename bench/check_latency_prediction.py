"""Check a latency table against reality: predicted vs measured whole-network latency, on its runtime.

Takes N random discrete architectures of a search space (default: 200 of fmnist-paper; --sample mixed
draws each one's own mix of primitives, spreading them over the space's range of latency), predicts
each one's latency from the table (the network base plus the sum of its chosen ops, what
``LatencyTable.predict`` and ``derive --budget-ms`` use) and measures each whole network on the
table's runtime (eager torch, or exported to ONNX and run in ONNX Runtime), interleaved: every round
times a few forwards of each network of a chunk in turn, so a burst of load lands on all alike.
Prints Kendall's tau (tau-b), the mean absolute percentage error (MAPE), the mean error and the
share of architectures within +-10 % and +-5 %, for

- ``table``:      the table's prediction (with its calibration, if it has one);
- ``+c (LOO)``:   plus a per-network constant c fitted leave-one-out (the median residual of the
                  other architectures);
- ``+offset(K)``: plus the median residual of the first K architectures, scored on the others: what
                  ``profile --calibrate K`` adds to an uncalibrated table;
- ``retest``:     with --retest, the same architectures measured again (a second interleaved pass) as if
                  it were the prediction: how well the machine agrees with itself, the ceiling any table
                  can reach against one pass; the table is then scored against the faster of the two
                  timings of each network too (other work only adds time, so the less disturbed one).

Networks are measured by the run the table predicts with (``meta['statistic']``: each network's median run,
or its fastest with ``profile --statistic min``); where the table records both, the same runs are scored
read the other way too (the table's entries by that statistic, with no offset), a paired comparison.

With a paced table (``profile --pace``), or with --pace, the anchor of ``dartscc_fast.latency.pace`` is probed
beside every chunk, and the same runs are scored scaled to the table's pace too; a paced table is also scored as
measured (``LatencyTable.unpaced``): four pairs from one set of runs.

It writes a predicted-against-measured scatter plot (--plot) and, with --json, every figure. The
table's measurement conditions (threads, load, governor) are printed beside the network's, and a
warning fires when the machine was too busy for trustworthy timings.

With --search DIR it also checks budgets: --budgets K budgets spread over the family's predicted
range, the architecture ``derive_for_budget`` picks for each (on this table), each measured: the
share that meets its budget.

    dartscc-fast profile --runtime onnxruntime --threads 1 --out ort1.json
    python bench/check_latency_prediction.py --table ort1.json --plot ort1.png
    python bench/check_latency_prediction.py --runtime torch --threads 2 --save-table torch2.json
    python bench/check_latency_prediction.py --table ort1.json --n 0 --search runs/search --budgets 10

Without --table, a table is profiled here first (--runtime, --threads). The figures it gave, and
what they say: docs/latency.md, "Is the prediction right?".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

from dartscc_fast.latency import LatencyTable, profile_space
from dartscc_fast.latency.measure import device_name, measurement_conditions, time_genotypes
from dartscc_fast.latency.pace import table_ref_ms
from dartscc_fast.latency.runtimes import RUNTIMES
from dartscc_fast.latency.table import STATISTICS
from dartscc_fast.progress import Progress
from dartscc_fast.space import get_space, mixed_random_genotype, random_genotype


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties counted as scipy.stats.kendalltau does), O(n^2) with numpy."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    n1, n2 = np.sum(dx == 0), np.sum(dy == 0)
    denom = np.sqrt((n0 - n1) * (n0 - n2))
    return float(np.sum(dx * dy) / denom) if denom > 0 else float("nan")


def mape(pred, meas) -> float:
    pred, meas = np.asarray(pred), np.asarray(meas)
    return float(np.mean(np.abs(pred - meas) / meas) * 100)


def loo_constant(pred, meas) -> np.ndarray:
    """pred + c_i, with c_i the median residual meas - pred over all archs but i."""
    pred, meas = np.asarray(pred), np.asarray(meas)
    r = meas - pred
    return np.array([pred[i] + np.median(np.delete(r, i)) for i in range(len(pred))])


def scores(pred, meas) -> dict:
    err = (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas) * 100
    return {"kendall_tau": kendall_tau(pred, meas), "mape": mape(pred, meas), "mean_error": float(np.mean(err)),
            "within_10": float(np.mean(np.abs(err) <= 10) * 100), "within_5": float(np.mean(np.abs(err) <= 5) * 100)}


def measure(space, genotypes, table, threads, clock, rounds, runs, chunk, desc="networks", pace=False):
    """Every genotype's measured latency (ms) by each statistic a table reads ('median', 'min') and its IQR
    ('iqr'), arrays keyed by name; interleaved within chunks of ``chunk`` (a graph runtime holds a session per
    network: all 200 at once need gigabytes). With ``pace``, also 'paced_median' and 'paced_min': the same runs
    scaled to the table's pace (a table without one: the median pace of the chunks) by the median probe of the
    anchor beside each chunk ('pace')."""
    out = {name: [] for name in STATISTICS + ("iqr", "pace")}
    bar = Progress(total=len(genotypes), desc=f"timing {desc} ({table.runtime}, {threads} thread(s))")
    for i in range(0, len(genotypes), chunk):
        part = genotypes[i:i + chunk]
        probes = [] if pace else None
        tms = time_genotypes(space, part, batch=table.batch or 64, dtype=table.dtype, threads=threads,
                             memory_format=table.memory_format, rounds=rounds, runs=runs, clock=clock,
                             runtime=table.runtime, pace=probes)
        for name in STATISTICS:
            out[name] += [tm.value(name) for tm in tms]
        out["iqr"] += [tm.iqr for tm in tms]
        out["pace"] += [float(np.median(probes)) if pace else np.nan] * len(tms)
        bar.update(len(part))
    bar.close()
    out = {name: np.array(v) for name, v in out.items()}
    if pace:
        ref = table_ref_ms(table.meta) or float(np.median(out["pace"]))
        for name in STATISTICS:
            out["paced_" + name] = out[name] * ref / out["pace"]
    return out


def plot(path, pred, meas, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = min(pred.min(), meas.min()) * 0.95, max(pred.max(), meas.max()) * 1.05
    xs = np.array([lo, hi])
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="tab:green", alpha=0.12, label="±10 %")
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="tab:green", alpha=0.2, label="±5 %")
    ax.plot(xs, xs, "k-", lw=0.8)
    ax.scatter(meas, pred, s=9, color="tab:blue")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured whole network (ms)")
    ax.set_ylabel("predicted by the table (ms)")
    ax.set_title(title, fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def conditions_text(c: dict) -> str:
    return (f"load average {c.get('load_average')}, busy CPUs {c.get('busy_cpus')}, "
            f"governor {c.get('governor')}")


def get_table(args, space):
    if args.table:
        table = LatencyTable.load(args.table)
        if args.runtime and args.runtime != table.runtime:
            raise SystemExit(f"--runtime {args.runtime}, but {args.table} was measured on {table.runtime}: "
                             f"profile a table on {args.runtime} (dartscc-fast profile --runtime {args.runtime})")
        return table.with_statistic(args.statistic) if args.statistic else table
    table = profile_space(space, batch=args.batch, threads=args.threads or 1, runtime=args.runtime or "torch",
                          clock=args.clock, passes=2, statistic=args.statistic or "median")
    if args.save_table:
        table.save(args.save_table)
    return table


SAMPLES = {"uniform": random_genotype, "mixed": mixed_random_genotype}


def random_genotypes(space, n, seed, top2, sample="uniform"):
    """n distinct random architectures: ``uniform`` (every edge's primitive uniform) or ``mixed`` (each
    architecture its own mix of primitives, so the sample spans the space's range of latency)."""
    draw = SAMPLES[sample]
    gen = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    while len(out) < n:
        g = draw(space, gen, top2=top2)
        if g.to_json() not in seen:
            seen.add(g.to_json())
            out.append(g)
    return out


def check_budgets(args, space, table, threads, log):
    """Budgets across the family's range: the share of picks whose measured latency meets the budget."""
    from dartscc_fast.evaluation.budget import derive_for_budget, family_for_budgets, fit_ms
    from dartscc_fast.search import load_search
    result = load_search(args.search)
    if result.space.name != space.name:
        raise SystemExit(f"--search {args.search} searched {result.space.name}, not {space.name}")
    on_table = dataclasses.replace(result, table=table)
    # the budgets span what has to fit them (conservative: the tops of the predicted intervals)
    need = [fit_ms(on_table, d, args.conservative) for d in family_for_budgets(on_table, progress=False)]
    lo, hi = min(need), max(need)
    budgets = [float(b) for b in np.linspace(lo, hi, args.budgets + 1)[1:]]
    picks = derive_for_budget(result, budgets, table=table, max_batches=args.max_batches,
                              conservative=args.conservative)
    timed = measure(space, [p.derived.genotype for p in picks], table, threads, args.clock, args.rounds, args.runs,
                    args.chunk, desc="budget picks", pace=paced_check(args, table))
    meas = timed[table.statistic]
    hits = [m <= p.budget_ms for p, m in zip(picks, meas)]
    paced_hits = [m <= p.budget_ms for p, m in zip(picks, timed["paced_" + table.statistic])] \
        if "paced_" + table.statistic in timed else None
    log(f"budgets over the family's range {lo:.2f}-{hi:.2f} ms (predicted"
        f"{', conservative picks' if args.conservative else ''}): {sum(hits)} of {len(hits)} picks "
        f"measure within their budget ({np.mean(hits) * 100:.0f}%)"
        + (f"; paced, {sum(paced_hits)} of {len(hits)}" if paced_hits is not None else ""))
    for p, m, h in zip(picks, meas, hits):
        log(f"  budget {p.budget_ms:8.2f}  predicted {p.predicted_ms:8.2f} ± {p.spread_ms:5.2f}  measured "
            f"{m:8.2f}  {'ok' if h else 'OVER'}")
    return {"budgets": budgets, "predicted": [p.predicted_ms for p in picks], "measured": meas.tolist(),
            "hits": int(sum(hits)), "share": float(np.mean(hits)),
            "paced_hits": None if paced_hits is None else int(sum(paced_hits))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", help="the table to check (default: profile one here first)")
    ap.add_argument("--runtime", choices=sorted(RUNTIMES), default=None,
                    help="the runtime to measure on (default: the table's; without --table: torch)")
    ap.add_argument("--space", default="fmnist-paper")
    ap.add_argument("--n", type=int, default=200, help="random architectures (default 200; 0: budgets only)")
    ap.add_argument("--batch", type=int, default=64, help="without --table: the batch to profile at")
    ap.add_argument("--threads", type=int, default=None, help="default: the table's, else 1")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="wall: elapsed time (default); thread: the calling thread's CPU time (one thread only; "
                         "robust to other work on a shared machine)")
    ap.add_argument("--rounds", type=int, default=6,
                    help="interleaved rounds (default 6: a network's time drifts by 10 %% over tens of seconds on a "
                         "shared virtual machine, so many short rounds beat a few long ones)")
    ap.add_argument("--runs", type=int, default=2, help="timed forwards per network per round (default 2)")
    ap.add_argument("--chunk", type=int, default=25, help="networks interleaved at a time (default 25)")
    ap.add_argument("--top2", action="store_true", help="DARTS genotypes: two inputs per node")
    ap.add_argument("--sample", choices=sorted(SAMPLES), default="uniform",
                    help="uniform primitives per edge (default), or a mix per architecture (a wider latency range)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-table", help="write the table profiled here to this file")
    ap.add_argument("--plot", default="latency_prediction.png", help="scatter plot to write ('' for none)")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--search", help="also check budgets on this search's family")
    ap.add_argument("--budgets", type=int, default=10, help="budgets across the family's range (default 10)")
    ap.add_argument("--conservative", action="store_true",
                    help="budget picks: the top of the predicted interval must fit (derive --conservative)")
    ap.add_argument("--max-batches", type=int, default=None, help="validation batches ranking the budget picks")
    ap.add_argument("--refit", type=int, default=20,
                    help="also score the table plus the offset `profile --calibrate K` fits, fitted on the first K "
                         "architectures and scored on the others (default 20; 0: not)")
    ap.add_argument("--retest", action="store_true",
                    help="measure every architecture twice and score the second pass against the first (the "
                         "machine's own repeatability; twice the time)")
    ap.add_argument("--statistic", choices=STATISTICS, default=None,
                    help="predict and measure with this run of each op and network (default: the table's); the "
                         "other one is scored too where the table records both")
    ap.add_argument("--pace", action="store_true",
                    help="probe the machine's pace beside every chunk and also score the measurement scaled to it "
                         "(always for a table profiled with --pace)")
    ap.add_argument("--verbose", action="store_true", help="print every architecture")
    args = ap.parse_args(argv)
    if args.n < 0 or args.rounds < 1 or args.runs < 1 or args.chunk < 1:
        raise SystemExit("--n must be >= 0, --rounds, --runs and --chunk >= 1")

    space = get_space(args.space)
    table = get_table(args, space)
    threads = args.threads or table.meta.get("threads") or 1
    if table.meta.get("threads") not in (None, threads):
        warnings.warn(f"the table was measured with {table.meta.get('threads')} threads, the networks are timed "
                      f"with {threads}")
    m = table.meta
    print(f"table {args.table or '(profiled here)'}: {table.runtime} {m.get('runtime_version') or m.get('torch')}, "
          f"{m.get('provider') or 'eager'}, {m.get('threads')} thread(s), ops {m.get('op_timing') or 'isolated'}, "
          f"batch {table.batch}, {table.memory_format}; measured with {conditions_text(m)}")
    out = {"args": vars(args), "table_meta": m, "threads": threads}
    if args.n:
        out.update(check_random(args, space, table, threads))
    if args.search:
        out["budget_check"] = check_budgets(args, space, table, threads, print)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def check_random(args, space, table, threads) -> dict:
    genotypes = random_genotypes(space, args.n, args.seed, args.top2, args.sample)
    before = measurement_conditions(torch.device("cpu"), threads, args.clock)
    t0 = time.perf_counter()
    pace = paced_check(args, table)
    first = measure(space, genotypes, table, threads, args.clock, args.rounds, args.runs, args.chunk, pace=pace)
    again = measure(space, genotypes, table, threads, args.clock, args.rounds, args.runs, args.chunk,
                    desc="networks again", pace=pace) if args.retest else None
    elapsed = time.perf_counter() - t0
    after = measurement_conditions(torch.device("cpu"), threads, args.clock)
    measured = {name: (first[name], None if again is None else again[name]) for name in STATISTICS}
    med, iqr = first["median"], first["iqr"]
    meas = measured[table.statistic][0]
    print(f"space {space.name}, {len(genotypes)} random architectures ({args.sample}{', top2' if args.top2 else ''}), "
          f"CPU {device_name('cpu')}, {table.runtime}, {threads} thread(s), {args.clock} clock, "
          f"{args.rounds} rounds x {args.runs} runs per network in chunks of {args.chunk}, {elapsed:.0f} s; "
          f"machine before: {conditions_text(before)}; after: {conditions_text(after)}")
    pred = np.array([table.predict(space, g) for g in genotypes])
    print(f"measured whole network ({table.statistic} run): {meas.min():.2f} .. {meas.max():.2f} ms, sd of log "
          f"{np.std(np.log(meas)):.3f} (median IQR/median {np.median(iqr / med) * 100:.1f}%); residual constant c = "
          f"{np.median(meas - pred):+.2f} ms")
    if args.verbose:
        for g, mm, p in zip(genotypes, meas, pred):
            print(f"  {g.op_counts(space)}  measured {mm:8.2f}  predicted {p:8.2f}  ({(p - mm) / mm * 100:+.1f}%)")
    results = score_predictors(args.refit, pred, *measured[table.statistic], table.statistic)
    other = "min" if table.statistic == "median" else "median"
    try:  # the same runs read by the other statistic: a paired comparison of the two, uncalibrated
        on_other = table.with_statistic(other)
    except ValueError:
        on_other = None
    if on_other is not None:
        pred_other = np.array([on_other.predict(space, g) for g in genotypes])
        results_other = score_predictors(args.refit, pred_other, *measured[other], other)
    extra = score_paced(args, space, genotypes, table, pred, first, again) if pace else {}
    extra.update(score_shared_work(args, space, genotypes, table, measured[table.statistic]))
    if again is not None:  # other work only adds time: the faster of two timings minutes apart is the less disturbed
        extra["results_fastest_of_both"] = score_predictors(
            args.refit, pred, np.minimum(*measured[table.statistic]), None, table.statistic,
            "the table against the faster of the two timings, network by network")
    if args.plot:
        r = results["table"]
        plot(args.plot, pred, meas, f"{space.name}, {len(genotypes)} {args.sample} random archs, {table.runtime}, "
                                    f"{threads} thread(s), {table.statistic}: tau {r['kendall_tau']:.3f}, MAPE "
                                    f"{r['mape']:.1f} %, {r['within_10']:.0f} % within ±10 %")
        print(f"wrote {args.plot}")
    return {"results": results, "statistic": table.statistic, "sample": args.sample,
            "results_other_statistic": None if on_other is None else {"statistic": other, "results": results_other},
            "measured_log_sd": float(np.std(np.log(meas))),
            "measured": med.tolist(), "measured_iqr": iqr.tolist(), "measured_min": first["min"].tolist(),
            "retest": None if again is None else again["median"].tolist(),
            "retest_min": None if again is None else again["min"].tolist(), "predicted": pred.tolist(),
            "genotypes": [g.to_json() for g in genotypes], "conditions_before": before, "conditions_after": after,
            "seconds": elapsed, "cpus": os.cpu_count(), **extra}


def paced_check(args, table) -> bool:
    """Whether the check probes the machine's pace beside its chunks: for a paced table, or with --pace."""
    return bool(args.pace or table_ref_ms(table.meta))


def score_paced(args, space, genotypes, table, pred, first, again) -> dict:
    """The scores that pacing adds, paired on the same runs: the table against the paced measurement, and, for a
    paced table, the same table as measured (``LatencyTable.unpaced``) against both measurements."""
    stat = table.statistic
    paced = (first["paced_" + stat], None if again is None else again["paced_" + stat])
    out = {"measured_paced": paced[0].tolist(), "retest_paced": None if again is None else paced[1].tolist(),
           "pace": first["pace"].tolist(),
           "results_paced_measurement": score_predictors(args.refit, pred, *paced, stat,
                                                                      "the table against the paced measurement")}
    if table_ref_ms(table.meta):
        raw = table.unpaced()
        pred_raw = np.array([raw.predict(space, g) for g in genotypes])
        out["predicted_unpaced_table"] = pred_raw.tolist()
        out["results_unpaced_table"] = score_predictors(args.refit, pred_raw, first[stat], None, stat,
                                                        "the unpaced table against the measurement")
        out["results_unpaced_table_paced_measurement"] = score_predictors(
            args.refit, pred_raw, paced[0], None, stat, "the unpaced table against the paced measurement")
    return out


def score_shared_work(args, space, genotypes, table, measured) -> dict:
    """For a table whose entries split shared work from per-edge work (ops in context), the same table read as
    every edge's average cost in context instead (``predict(shared=False)``), on the same runs: a paired
    comparison of the two models."""
    if not table.shared_work_entries():
        return {}
    pred = np.array([table.predict(space, g, shared=False) for g in genotypes])
    return {"predicted_per_edge_average": pred.tolist(),
            "results_per_edge_average": score_predictors(args.refit, pred, *measured, table.statistic,
                                                         "the table as per-edge averages in context (no work "
                                                         "shared once per node)")}


def score_predictors(k, pred, meas, retest, statistic, label="") -> dict:
    """Print and return the scores of the table's prediction, its level-corrected variants and the retest."""
    if label:
        print(f"-- {label}")
    preds = {"table": pred, "+c (LOO)": loo_constant(pred, meas)}
    if 0 < k < len(pred) - 1:  # what `profile --calibrate k` would add, scored on the architectures it did not see
        preds[f"+offset({k})"] = pred + np.median(meas[:k] - pred[:k])
    if retest is not None:
        preds["retest"] = retest
    print(f"{'predictor, ' + statistic:<16} {'kendall_tau':>11} {'MAPE_%':>8} {'mean_err_%':>10} {'within10_%':>10} "
          f"{'within5_%':>9}")
    results = {}
    for name, p in preds.items():
        held = slice(k, None) if name.startswith("+offset") else slice(None)
        r = results[name] = scores(p[held], meas[held])
        print(f"{name:<16} {r['kendall_tau']:>11.3f} {r['mape']:>8.2f} {r['mean_error']:>+10.2f} "
              f"{r['within_10']:>10.1f} {r['within_5']:>9.1f}")
    return results


if __name__ == "__main__":
    sys.exit(main())
