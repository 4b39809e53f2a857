"""Several random architectures per profile: is "over random" the profile, or the one random draw?

Reports before stop 40 retrained one random architecture matched to each profile's predicted latency, so "over
random" per seed carried that one draw's luck; they now retrain ``report.RANDOM_DRAWS``. This script retrains,
on each reproduce seed's own split, table and retraining settings, the ``--per-profile`` random architectures
closest to each profile's latency (those the report already retrained are read back, not retrained), and
scores each profile against their first draw and against their mean.

    python bench/random_matched_many.py --runs runs/reproduce --per-profile 4 --out bench-out/random-many.json

No test image is used to choose anything: the draws are fixed by the seed before any training. Resumable:
rows already in ``--out`` are not retrained.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

import torch

from dartscc_fast.evaluation.evaluate import retrain
from dartscc_fast.evaluation.report import matched_random_draws, report_retraining, row_genotype
from dartscc_fast.evaluation.reproduce import saved_seeds
from dartscc_fast.search.result import load_search


def draws(seed_dir: Path, report: dict, per_profile: int):
    """The search, and ``[(profile, draw, genotype, predicted_ms)]``: for each profile the ``per_profile`` random
    architectures closest to its latency, drawn as the report draws them (``report.matched_random_draws``)."""
    result = load_search(seed_dir / "search")
    profiles = {p["label"]: SimpleNamespace(genotype=row_genotype(p), predicted_ms=p["predicted_ms"])
                for p in report["profiles"]}
    return result, matched_random_draws(result.space, result.table, profiles, per_profile, result.config.seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="reproduce output directories (seed*/report.json)")
    p.add_argument("--per-profile", type=int, default=4, help="random architectures per profile (default 4)")
    p.add_argument("--out", default="bench-out/random-many.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.per_profile < 1:
        p.error("--per-profile must be at least 1")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else {}
    for seed_dir, report in saved_seeds(args.runs):
        result, picked = draws(seed_dir, report, args.per_profile)
        # reports from before several draws hold one, without a draw index
        given = {(r["matched"], r.get("draw", 0)): r for r in report["baselines"].get("random", [])}
        loaders = rc = None
        for name, k, g, ms in picked:
            key = f"{seed_dir}/{name}/{k}"
            if key in rows:
                continue
            if (name, k) in given:  # the report's own draw: check it is the same architecture, then read it back
                mine = given[name, k]
                if row_genotype(mine).to_json() != g.to_json():
                    raise SystemExit(f"{seed_dir}: draw {k + 1} for {name} is not the report's {mine['label']}")
                acc = mine["test_acc"]
            else:
                if loaders is None:
                    loaders = result.config.loaders()
                    rc = report_retraining(report, result.config.seed)
                acc = retrain(result.space, g, loaders, rc, desc=f"{seed_dir.name} random ~{name} #{k}")["test_acc"]
            rows[key] = {"test_acc": acc, "predicted_ms": ms, "ops": g.op_counts(result.space)}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=1))
            print(f"{key:60s} {100 * acc:5.1f} %  {ms:6.1f} ms  {rows[key]['ops']}")
        for prof in report["profiles"]:
            rows[f"{seed_dir}/{prof['label']}/profile"] = {"test_acc": prof["test_acc"],
                                                          "predicted_ms": prof["predicted_ms"]}
    out.write_text(json.dumps(rows, indent=1))
    summarise(rows, args.per_profile)


def summarise(rows: dict, per_profile: int) -> None:
    seeds = sorted({k.rsplit("/", 2)[0] for k in rows})
    print(f"\npoints over random (mean over seeds, SE); the report's one draw, and the mean of {per_profile}")
    for name in sorted({k.rsplit("/", 2)[1] for k in rows}):
        one, many, spread = [], [], []
        for s in seeds:
            prof = rows.get(f"{s}/{name}/profile")
            accs = [rows[f"{s}/{name}/{k}"]["test_acc"] for k in range(per_profile) if f"{s}/{name}/{k}" in rows]
            if prof is None or len(accs) < per_profile:
                continue
            one.append(100 * (prof["test_acc"] - accs[0]))
            many.append(100 * (prof["test_acc"] - statistics.mean(accs)))
            spread.append(100 * statistics.stdev(accs) if len(accs) > 1 else 0.0)
        if one:
            se = lambda v: statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0  # noqa: E731
            print(f"  {name}: one draw {statistics.mean(one):+5.2f} (SE {se(one):.2f}); mean of {per_profile} "
                  f"{statistics.mean(many):+5.2f} (SE {se(many):.2f}); sd between the draws of a seed "
                  f"{statistics.mean(spread):.2f}; {len(one)} seeds")


if __name__ == "__main__":
    main()
