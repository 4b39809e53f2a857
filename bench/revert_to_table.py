"""Do a profile's departures from the table pay? Revert those of one op type to the table-only pick, retrain both.

The table-only pick (``report`` baselines, ``kind="table"``) is what the latency term alone chooses at a profile's
S. Where the searched profile puts an op of ``--type`` on an edge and the table-only pick does not, this script
sets that edge back to the table-only pick's op, and retrains the profile and the reverted architecture with the
report's own protocol (each seed's split, epochs, learning rate and seed), so the pair differs only in those edges.
For example, the searched C keeps pools that its table-only pick, priced by S = (pool 0.70, ...), has none of:

    python bench/revert_to_table.py --runs runs/reproduce --profile C --type pool --out bench-out/revert-C-pool.json

It prints, per seed, both accuracies and the edges reverted, then the mean difference over seeds with its SE.
No test image chooses anything: the reverted edges are fixed by the report before any training. Resumable:
seeds already in ``--out`` are not retrained.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dartscc_fast.evaluation.evaluate import retrain
from dartscc_fast.evaluation.report import report_retraining, row_genotype
from dartscc_fast.evaluation.reproduce import saved_seeds
from dartscc_fast.nn.primitives import OP_TYPES, op_type
from dartscc_fast.search.result import load_search
from dartscc_fast.space import Genotype


def revert(searched: Genotype, table: Genotype, kind: str):
    """``searched`` with every edge whose op is of type ``kind`` (and the table's is not) set to ``table``'s op;
    returns the genotype and the number of edges changed. The two must share their edges (all inputs kept)."""
    changed, cells = 0, {}
    for cell in ("normal", "reduce"):
        nodes = []
        for mine, theirs in zip(getattr(searched, cell), getattr(table, cell)):
            if [i for _, i in mine] != [i for _, i in theirs]:
                raise ValueError(f"{cell} cell: the searched and table-only genotypes keep different inputs")
            node = []
            for (op, i), (op_t, _) in zip(mine, theirs):
                back = op_type(op) == kind and op_type(op_t) != kind
                node.append((op_t if back else op, i))
                changed += back
            nodes.append(node)
        cells[cell] = nodes
    return Genotype(normal=cells["normal"], reduce=cells["reduce"],
                    normal_concat=searched.normal_concat, reduce_concat=searched.reduce_concat), changed


def pair(seed_dir: Path, report: dict, profile: str, kind: str):
    """The seed's search, its retraining config, and (searched, reverted, edges reverted) for ``profile``."""
    mine = [p for p in report["profiles"] if p["label"] == profile]
    table = [r for r in report["baselines"].get("table", []) if r["matched"] == profile]
    if not mine or not table:
        raise SystemExit(f"{seed_dir}: no profile {profile!r} with a table-only pick in report.json")
    searched = row_genotype(mine[0])
    reverted, n = revert(searched, row_genotype(table[0]), kind)
    result = load_search(seed_dir / "search")
    return result, report_retraining(report, result.config.seed), (searched, reverted, n), mine[0].get("test_acc")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="reproduce output directories (seed*/report.json)")
    p.add_argument("--profile", default="C", help="the profile's label (default C)")
    p.add_argument("--type", default="pool", choices=OP_TYPES, help="the op type to revert (default pool)")
    p.add_argument("--out", default="bench-out/revert-to-table.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else {}
    for seed_dir, report in saved_seeds(args.runs):
        key = f"{seed_dir}/{args.profile}/{args.type}"
        if key in rows:
            continue
        result, rc, (searched, reverted, n), reported = pair(seed_dir, report, args.profile, args.type)
        row = {"edges_reverted": n, "report_test_acc": reported}
        if n:
            loaders = result.config.loaders()
            for name, g in (("searched", searched), ("reverted", reverted)):
                row[name] = {"test_acc": retrain(result.space, g, loaders, rc, desc=f"{seed_dir.name} {name}")[
                    "test_acc"], "ops": g.op_counts(result.space), "genotype": json.loads(g.to_json()),
                            "predicted_ms": result.table.predict(result.space, g)}
        rows[key] = row
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        if n:
            print(f"{key}: {n} edges reverted; " + ", ".join(
                f"{name} {100 * row[name]['test_acc']:.1f} % at {row[name]['predicted_ms']:.1f} ms {row[name]['ops']}"
                for name in ("searched", "reverted")))
        else:
            print(f"{key}: no {args.type} edge departs from the table; skipped")
    summarise(rows, args.profile, args.type)


def summarise(rows: dict, profile: str, kind: str) -> None:
    diffs = [100 * (r["searched"]["test_acc"] - r["reverted"]["test_acc"]) for k, r in sorted(rows.items())
             if k.endswith(f"/{profile}/{kind}") and r["edges_reverted"]]
    if not diffs:
        print("no seed with edges to revert")
        return
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"\n{profile} - {profile} with its {kind} departures reverted to the table-only pick: "
          f"{statistics.mean(diffs):+.2f} points (SE {se:.2f}) over {len(diffs)} seeds; per seed "
          + ", ".join(f"{d:+.1f}" for d in diffs))


if __name__ == "__main__":
    main()
