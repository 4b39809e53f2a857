"""Check a latency table against reality: predicted vs measured whole-network latency.

Takes N random discrete architectures of a search space (default: 30 of
fmnist-paper), predicts each one's latency from the per-op table (the sum over
its chosen ops, and that sum plus the measured network base: stem,
preprocessing, node sums, concatenation, pooling, classifier) and measures its
whole forward on this CPU. Prints Kendall's tau (tau-b, numpy only) and the
mean absolute percentage error (MAPE) of each predictor:

- ``sum``:          the sum of the chosen ops' table entries;
- ``base+sum``:     plus the table's network-base entry (what `predict` does);
- ``base+sum+c``:   plus a per-network constant c for what the base misses,
                    fitted leave-one-out (c = median residual of the others),
                    so no architecture is scored with its own measurement.

The table is measured in the same run, interleaved with the networks (R rounds,
each timing every op configuration and every network), so a drift in the
machine's state affects the table and the networks alike. Give --table to use
a table made earlier (e.g. by ``dartscc-fast profile``) instead.

With one thread (the default) the clock is the thread's CPU time: on a small
machine shared with other processes (builds, tests), wall-clock medians favour
short runs, which slip between preemptions, over long ones, which cannot, and
so bias per-op sums against whole networks. ``--clock wall`` measures elapsed
time instead (use it on an idle machine, and with more threads).

    python bench/check_latency_prediction.py                 # 30 archs, batch 64, 1 thread
    python bench/check_latency_prediction.py --threads 2 --clock wall --n 40 --rounds 4

The figures it gave, and what they say: docs/latency.md, "Is the prediction right?".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from dartscc_fast.latency import LatencyTable
from dartscc_fast.latency._time import utc_now
from dartscc_fast.latency.keys import BaseConfig, space_configs
from dartscc_fast.latency.measure import (
    Timing,
    build_base_network,
    build_network,
    build_op,
    device_name,
    in_format,
    network_input,
    num_threads,
    time_callable,
)
from dartscc_fast.progress import Progress
from dartscc_fast.space import get_space, random_genotype


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="fmnist-paper")
    ap.add_argument("--n", type=int, default=30, help="random architectures (default 30)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a small shared machine, more threads than idle cores "
                         "makes OpenMP timings erratic)")
    ap.add_argument("--clock", choices=["auto", "wall", "thread"], default="auto",
                    help="thread CPU time or elapsed time (default: thread with 1 thread, else wall)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="timed forwards per network per round (default 3)")
    ap.add_argument("--op-seconds", type=float, default=0.3, help="timing budget per op config per round")
    ap.add_argument("--table", help="use this table instead of measuring one here")
    ap.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                    help="layout of the ops and networks (default channels_last, as profile_space on the CPU; "
                         "with --table, the table's)")
    ap.add_argument("--top2", action="store_true", help="DARTS genotypes: two inputs per node")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-table", help="write the table measured here to this file")
    ap.add_argument("--json", help="write the per-architecture results to this file")
    ap.add_argument("--verbose", action="store_true", help="print every architecture")
    args = ap.parse_args(argv)

    space = get_space(args.space)
    dtype, dev = "float32", torch.device("cpu")
    gen = torch.Generator().manual_seed(args.seed)
    genotypes, seen = [], set()
    while len(genotypes) < args.n:
        g = random_genotype(space, gen, top2=args.top2)
        if g.to_json() not in seen:
            seen.add(g.to_json())
            genotypes.append(g)
    table = LatencyTable.load(args.table, device="cpu") if args.table else None
    fmt = table.memory_format if table is not None else args.memory_format
    nets = [build_network(space, g, dtype, dev, fmt) for g in genotypes]
    x = network_input(space, args.batch, dtype, dev, fmt)

    jobs = {}  # key -> callable: the table's entries, measured here unless --table
    if args.table is None:
        for cfg in space_configs(space, args.batch, dtype, "cpu"):
            op, xi = build_op(cfg, fmt), in_format(torch.randn(cfg.batch, cfg.cin, cfg.h, cfg.w), fmt)
            jobs[cfg.key()] = lambda op=op, xi=xi: op(xi)
        for inputs in ("top2", "all"):
            base_net = build_base_network(space, inputs, dtype, dev, fmt)
            jobs[BaseConfig.of(space, args.batch, dtype, "cpu", inputs).key()] = lambda net=base_net: net(x)
    op_t = {k: Timing() for k in jobs}
    net_t = [Timing() for _ in nets]

    clock = args.clock if args.clock != "auto" else ("thread" if args.threads == 1 else "wall")
    t0 = time.perf_counter()
    with num_threads(args.threads) as threads:
        bar = Progress(total=args.rounds * (len(jobs) + len(nets)), desc="timing")
        for _ in range(args.rounds):
            for key, fn in jobs.items():
                time_callable(fn, dev, warmup=2, min_runs=5, max_runs=200, max_seconds=args.op_seconds,
                              rel_ci=0.0, timing=op_t[key], clock=clock)
                bar.update()
            for net, tm in zip(nets, net_t):
                time_callable(lambda net=net: net(x), dev, warmup=1, min_runs=args.runs, max_runs=args.runs,
                              timing=tm, clock=clock)
                bar.update()
        bar.close()
    elapsed = time.perf_counter() - t0

    if args.table is None:
        table = LatencyTable(meta={"device": "cpu", "device_name": device_name(dev), "torch": torch.__version__,
                                   "threads": threads, "clock": clock, "date": utc_now(), "batch": args.batch,
                                   "dtype": dtype, "memory_format": fmt,
                                   "spaces": [space.name],
                                   "method": f"bench/check_latency_prediction.py: {args.rounds} interleaved "
                                             f"rounds, {clock} clock, inference_mode, median of pooled runs"})
        for key, tm in op_t.items():
            table.add(key, **tm.entry())
        if args.save_table:
            table.save(args.save_table)
    else:
        if table.meta.get("threads") not in (None, threads):
            print(f"warning: the table was measured with {table.meta.get('threads')} threads, the networks "
                  f"with {threads}", file=sys.stderr)

    meas = np.array([tm.median for tm in net_t])
    spread = np.array([tm.iqr / tm.median for tm in net_t])
    s = np.array([table.predict(space, g, batch=args.batch, include_base=False) for g in genotypes])
    base = np.array([table.base(space, g, batch=args.batch) for g in genotypes])
    preds = {"sum": s, "base+sum": s + base, "base+sum+c": loo_constant(s + base, meas)}
    c = float(np.median(meas - (s + base)))

    print(f"space {space.name}, {len(genotypes)} random architectures{' (top2)' if args.top2 else ''}, "
          f"batch {args.batch}, {dtype}, {fmt}, CPU {device_name(dev)}, torch {torch.__version__}, "
          f"{threads} thread(s), "
          f"{clock} clock, {args.rounds} rounds x {args.runs} runs per network, {elapsed:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"measured whole network: {meas.min():.2f} .. {meas.max():.2f} ms (median IQR/median "
          f"{np.median(spread) * 100:.1f}%); table base {np.median(base):.2f} ms; residual constant c = {c:+.2f} ms")
    if args.verbose:
        for g, m, p in zip(genotypes, meas, preds["base+sum"]):
            print(f"  {g.op_counts(space)}  measured {m:8.2f}  predicted {p:8.2f}  ({(p - m) / m * 100:+.1f}%)")
    print(f"{'predictor':<12} {'kendall_tau':>11} {'MAPE_%':>8} {'mean_err_%':>10}")
    results = {}
    for name, p in preds.items():
        tau, err = kendall_tau(p, meas), mape(p, meas)
        bias = float(np.mean((p - meas) / meas) * 100)
        results[name] = {"kendall_tau": tau, "mape": err, "mean_error": bias}
        print(f"{name:<12} {tau:>11.3f} {err:>8.2f} {bias:>+10.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": threads, "clock": clock, "results": results,
                       "network_times": [tm.times for tm in net_t],
                       "op_times": {k: tm.times for k, tm in op_t.items()}, "measured": meas.tolist(),
                       "predicted_sum": s.tolist(), "base": base.tolist(),
                       "genotypes": [g.to_json() for g in genotypes]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
