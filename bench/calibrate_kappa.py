"""Which trade-off the profiles A, B, C take: the seeds' claim and the edges changed against the table, per kappa.

Searches only (no retraining, no test image seen): for each latency table (profiled here at each thread
count given) and seed, one fixed-kappa search (the seeds' method) and one search with the strength axis;
then, per kappa, the profiles' op counts, whether the claim's op, parameter and predicted-latency parts
hold, the rows where each profile differs from its table-only architecture, and its stride-1 convolutions.
Prints a Markdown table (docs/design.md keeps one) and writes JSON.

    python bench/calibrate_kappa.py --out bench-out/calibrate --threads 2 1 --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dartscc_fast.evaluation.derive import derive, edges_changed, table_only
from dartscc_fast.evaluation.report import stride1_ops
from dartscc_fast.latency import profile_space
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.search.hypernet import PROFILES
from dartscc_fast.space import get_space

KAPPAS = (0.0, 0.5, 1.0, 2.0, 5.0, 20.0)


def claim_holds(row) -> bool:
    """B the fewest convolutions and parameters, C at most 4 pools and the most parameters, B < A < C predicted."""
    ops = {n: row[n]["ops"] for n in PROFILES}
    par = {n: row[n]["params"] for n in PROFILES}
    return (ops["B"]["conv"] <= min(ops["A"]["conv"], ops["C"]["conv"]) and ops["C"]["pool"] <= 4
            and par["B"] <= min(par["A"], par["C"]) and par["C"] >= max(par["A"], par["B"])
            and row["B"]["ms"] < row["A"]["ms"] < row["C"]["ms"])


def profiles_at(r, kappa, space):
    row = {}
    for name in PROFILES:
        d = derive(r, name, kappa=kappa)
        row[name] = {"ops": d.op_counts, "s1": stride1_ops(space, d.genotype), "ms": round(d.predicted_ms, 1),
                     "params": d.params,
                     "vs_table": edges_changed(space, d.genotype, table_only(r, name).genotype)}
    row["claim"] = claim_holds(row)
    return row


def common_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options of the search-only calibration scripts: where, which tables, seeds and demo sizes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=out)
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="table thread counts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=4)
    return p


def table_at(out: Path, space, threads: int) -> Path:
    """This CPU's latency table at ``threads`` threads, profiled once into ``out`` (then reused)."""
    table = out / f"table-{threads}threads.json"
    if not table.is_file():
        profile_space(space, "cpu", batch=64, threads=threads, max_seconds=0.15, min_runs=5).save(str(table))
    torch.set_num_threads(2)
    return table


def tables_and_seeds(args):
    """``(out, space, threads, table, seed)`` for every table thread count and seed asked for."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = get_space("fmnist-paper")
    for threads in args.threads:
        table = table_at(out, space, threads)
        for seed in args.seeds:
            yield out, space, threads, table, seed


def main(argv=None) -> int:
    p = common_arguments(__doc__.split("\n\n")[0], "bench-out/calibrate")
    p.add_argument("--kappa-max", type=float, default=20.0)
    p.add_argument("--fixed-kappa", type=float, default=5.0)
    args = p.parse_args(argv)
    rows = []
    for out, space, threads, table, seed in tables_and_seeds(args):
        for method, kw in (("fixed kappa", dict(strength=False, kappa=args.fixed_kappa)),
                           ("strength axis", dict(strength=True, kappa_max=args.kappa_max, kappa=2.0))):
            cfg = SearchConfig(limit=args.limit, split=(0.35, 0.075, 0.575), epochs=args.epochs, warmup_epochs=1,
                               per_sample=True, seed=seed, latency_table=str(table), progress=False,
                               out_dir=str(out / f"{method.split()[0]}-t{threads}-s{seed}"), **kw)
            r = load_search(run_search(cfg, resume=True))
            for kappa in (None,) if method == "fixed kappa" else KAPPAS:
                row = {"threads": threads, "seed": seed, "method": method,
                       "kappa": args.fixed_kappa if kappa is None else kappa, **profiles_at(r, kappa, space)}
                rows.append(row)
    (out / "calibrate.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| table threads | seed | method | kappa | A | B | C | claim | edges vs table A/B/C | stride-1 conv A/B/C |")
    print("| --- " * 10 + "|")
    for r in rows:
        f = lambda n: "-".join(str(r[n]["ops"][t]) for t in ("pool", "identity", "conv"))  # noqa: E731
        print(f"| {r['threads']} | {r['seed']} | {r['method']} | {r['kappa']:g} | {f('A')} | {f('B')} | {f('C')} "
              f"| {'yes' if r['claim'] else 'no'} | {'/'.join(str(r[n]['vs_table']) for n in PROFILES)} "
              f"| {'/'.join(str(r[n]['s1']['conv']) for n in PROFILES)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
