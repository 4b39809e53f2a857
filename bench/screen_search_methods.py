"""Screen variants of the strength-axis search on what needs no test image: the accurate end and the profiles.

For each latency table (profiled here at each thread count given), seed and variant, one search, plus
one DARTS search (kappa 0, S-independent logits) per table and seed. Per search it reports:

- at kappa 0 (the accurate end): the most stride-1 convolutions over the simplex grid, and the family's
  dearest predicted latency there against the DARTS search's architecture;
- at the profiles' kappa: the rows where A, B and C differ from their table-only architectures, and
  whether the claim's op, parameter and predicted-order parts hold;
- the inherited validation accuracy of the kappa-0 architecture at the uniform S (weights of the search).

Prints a Markdown table (docs/design.md keeps one) and writes JSON.

    python bench/screen_search_methods.py --out bench-out/screen --threads 2 1 --seeds 0 1 \
        --variants base zero25 warm2
"""
from __future__ import annotations

import dataclasses
import json

from calibrate_kappa import common_arguments, profiles_at, tables_and_seeds  # this folder is on the path as a script

from dartscc_fast.evaluation.derive import derive, derive_from_alphas
from dartscc_fast.evaluation.evaluate import UNIFORM_S, baseline_config, inherited_accuracy
from dartscc_fast.evaluation.report import stride1_ops
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.search.hypernet import simplex_grid

#: name -> SearchConfig fields changed from the base: the strength-axis search before the screen (uniform
#: strength draws, one warm-up epoch)
VARIANTS = {
    "base": {},
    "zero25": {"strength_zero_share": 0.25},
    "zero50": {"strength_zero_share": 0.5},
    "warm2": {"warmup_epochs": 2},
    "zero25-warm2": {"strength_zero_share": 0.25, "warmup_epochs": 2},
}


def accurate_end(r, grid: int):
    fam = [derive(r, S, kappa=0.0) for S in simplex_grid(grid)]
    return {"s1_conv_max": max(stride1_ops(r.space, d.genotype)["conv"] for d in fam),
            "ms_max": max(d.predicted_ms for d in fam), "uniform": fam[len(fam) // 2]}


def main(argv=None) -> int:
    p = common_arguments(__doc__.split("\n\n")[0], "bench-out/screen")
    p.add_argument("--variants", nargs="+", default=["base", "zero25", "warm2"], choices=sorted(VARIANTS))
    p.add_argument("--grid", type=int, default=4)
    args = p.parse_args(argv)
    rows = []
    for out, space, threads, table, seed in tables_and_seeds(args):
        base = SearchConfig(limit=args.limit, split=(0.35, 0.075, 0.575), epochs=args.epochs, warmup_epochs=1,
                            per_sample=True, seed=seed, latency_table=str(table), progress=False,
                            strength_zero_share=0.0, out_dir=str(out / f"base-t{threads}-s{seed}"))
        loaders = base.loaders()
        dc = baseline_config(base, "darts", out_dir=str(out / f"darts-t{threads}-s{seed}"))
        darts = load_search(run_search(dc, resume=True, loaders=loaders))
        an, ar = darts.alphas(UNIFORM_S)
        darts_ms = derive_from_alphas(space, an, ar, UNIFORM_S, darts.table).predicted_ms
        for name in args.variants:
            cfg = dataclasses.replace(base, out_dir=str(out / f"{name}-t{threads}-s{seed}"), **VARIANTS[name])
            r = load_search(run_search(cfg, resume=True, loaders=loaders))
            end = accurate_end(r, args.grid)
            val = inherited_accuracy(r.supernet, space, end["uniform"].genotype, loaders.val)
            rows.append({"threads": threads, "seed": seed, "variant": name, "darts_ms": darts_ms,
                         "end_ms": end["ms_max"], "s1_conv_max": end["s1_conv_max"], "val_acc0": val,
                         **profiles_at(r, None, space)})
            (out / "screen.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| table threads | seed | variant | kappa-0 stride-1 conv (most) | kappa-0 dearest / DARTS ms "
          "| val acc, kappa 0 uniform S | edges vs table A/B/C | claim |")
    print("| --- " * 8 + "|")
    for r in rows:
        print(f"| {r['threads']} | {r['seed']} | {r['variant']} | {r['s1_conv_max']} "
              f"| {r['end_ms']:.1f} / {r['darts_ms']:.1f} | {100 * r['val_acc0']:.1f} "
              f"| {'/'.join(str(r[n]['vs_table']) for n in 'ABC')} | {'yes' if r['claim'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
