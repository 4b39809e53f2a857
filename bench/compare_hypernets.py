"""Which hypernetwork serves better? The same search with each form, scored on what the search optimises.

For every form (linear, piecewise-linear, MLP): one search, then over a grid of
S on the simplex, the derived (argmax) architecture's objective on the
validation split with the supernet's weights,

    J(S) = CE_val(arch(S)) + kappa * Lat_S(arch(S)),

averaged over the grid (lower is better), with the spread of predicted latency
the family covers and the number of distinct architectures.

Run: python bench/compare_hypernets.py [--epochs 3 --limit 2000 --latency-table T.json --per-sample]
"""
import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from dartscc_fast.data.datasets import make_loaders
from dartscc_fast.evaluation.derive import derive
from dartscc_fast.evaluation.evaluate import genotype_weights
from dartscc_fast.search import SearchConfig, latency_term, load_search, run_search
from dartscc_fast.search.hypernet import simplex_grid


@torch.no_grad()
def val_ce(result, genotype, loader):
    net = result.supernet.train()
    wn, wr = genotype_weights(result.space, genotype)
    tot, n = 0.0, 0
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for x, y in loader:
        tot += float(F.cross_entropy(net(x, wn, wr, hard=True), y, reduction="sum"))
        n += y.numel()
    net.load_state_dict(state)
    return tot / n


def score(result, loaders, grid_steps=4):
    rows = []
    types = result.space.type_index().tolist()
    for S in simplex_grid(grid_steps):
        d = derive(result, S)
        wn, wr = genotype_weights(result.space, d.genotype)
        lat = float(latency_term(torch.cat([wn, wr]), result.L, S, types))
        ce = val_ce(result, d.genotype, loaders.val)
        rows.append({"J": ce + result.config.kappa * lat, "ce": ce, "lat": lat, "ms": d.predicted_ms,
                     "g": d.genotype.to_json()})
    return {"J": sum(r["J"] for r in rows) / len(rows), "ce": sum(r["ce"] for r in rows) / len(rows),
            "ms_spread": max(r["ms"] for r in rows) - min(r["ms"] for r in rows),
            "distinct": len({r["g"] for r in rows})}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--kappa", type=float, default=SearchConfig.kappa)
    p.add_argument("--latency-table", default=None)
    p.add_argument("--per-sample", action="store_true")
    p.add_argument("--kinds", nargs="*", default=["linear", "pwl", "mlp"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/compare-hypernets")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = SearchConfig(limit=args.limit, epochs=args.epochs, kappa=args.kappa, latency_table=args.latency_table,
                        per_sample=args.per_sample, progress=False)
    loaders = make_loaders(limit=args.limit, batch_size=base.batch_size)
    out = {}
    for kind in args.kinds:
        cfg = dataclasses.replace(base, hypernet=kind, out_dir=f"{args.out}/{kind}")
        t = time.perf_counter()
        r = load_search(run_search(cfg, loaders=loaders, force=True))  # a rerun replaces the last one's searches
        out[kind] = {**score(r, loaders), "search_s": time.perf_counter() - t}
        print(kind, json.dumps(out[kind]), flush=True)
    print(f"\nsplit: {loaders.split}")
    print("| hypernet | mean J over the grid (lower is better) | mean val CE | predicted latency spread ms "
          "| distinct architectures |")
    print("| --- | --- | --- | --- | --- |")
    for kind, s in out.items():
        print(f"| {kind} | {s['J']:.4f} | {s['ce']:.4f} | {s['ms_spread']:.1f} | {s['distinct']} |")


if __name__ == "__main__":
    main()
