"""How much can a profile gain over its table-only architecture at all?

The table-only architecture of a profile S puts the op of least S-weighted latency on every edge (a skip
connection on every stride-1 edge, since it costs about nothing there). A search at S can beat it only by
paying latency on some edges. This script retrains, on each reproduce seed's own split and with its
retraining settings, the table-only architecture beside hand-made variants of it that change only the
stride-1 edges (to convolutions, or to pooling), and the seed's DARTS search. If no variant gains a point, no
search at that S can gain one by those edges: the issue's margin is then out of reach for the protocol, not for
the method.

    python bench/profile_headroom.py --runs runs/reproduce --profile C --out bench-out/headroom.json

No test image is used to choose anything: every architecture here is fixed before training.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from dartscc_fast.evaluation.derive import derive_from_alphas, table_only_alphas
from dartscc_fast.evaluation.evaluate import RetrainConfig, retrain
from dartscc_fast.nn.primitives import OP_TYPES
from dartscc_fast.search.hypernet import parse_S
from dartscc_fast.search.result import load_search


def variants(result, S):
    """Table-only logits for S, and the same with the stride-1 rows of the normal cell (or of both cells)
    switched to one op type."""
    space = result.space
    an, ar = table_only_alphas(result.L, S, space.type_index().tolist())
    base = torch.cat([an, ar])
    strides = torch.tensor(space.row_strides())
    E = an.shape[0]
    normal = torch.arange(2 * E) < E
    ti = space.type_index()
    out = {"table-only": base}
    for kind in ("conv", "pool"):
        col = int((ti == OP_TYPES.index(kind)).nonzero()[0])
        for where, rows in (("normal", normal & (strides == 1)), ("every", strides == 1)):
            a = base.clone()
            a[rows] = -1.0
            a[rows, col] = 1.0
            out[f"stride-1 {kind}, {where} cell{'s' if where == 'every' else ''}"] = a
    return {name: (a[:E], a[E:]) for name, a in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="a reproduce output directory (seed*/search, seed*/darts)")
    p.add_argument("--profile", default="C", help="the profile's S (a name or pool=..,identity=..,conv=..)")
    p.add_argument("--retrain-epochs", type=int, default=3)
    p.add_argument("--out", default="bench-out/headroom.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    S = parse_S(args.profile)
    rows, out = {}, Path(args.out)
    if out.is_file():
        rows = json.loads(out.read_text())
    for seed_dir in sorted(Path(args.runs).glob("seed*")):
        result = load_search(seed_dir / "search")
        seed = result.config.seed
        loaders = result.config.loaders()
        rc = RetrainConfig(epochs=args.retrain_epochs, seed=seed)
        archs = {name: derive_from_alphas(result.space, an, ar, S, result.table)
                 for name, (an, ar) in variants(result, S).items()}
        darts = load_search(seed_dir / "darts")
        archs["darts search"] = derive_from_alphas(result.space, *darts.alphas(S), S, darts.table)
        for name, d in archs.items():
            key = f"{seed_dir.name}/{name}"
            if key not in rows:
                r = retrain(result.space, d.genotype, loaders, rc, desc=f"{seed_dir.name} {name}")
                rows[key] = {"test_acc": r["test_acc"], "predicted_ms": d.predicted_ms, "params": d.params,
                             "ops": d.op_counts}
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1))
            print(f"{key:45s} {100 * rows[key]['test_acc']:5.1f} %  {rows[key]['predicted_ms']:6.1f} ms")
    names = sorted({k.split("/", 1)[1] for k in rows})
    print(f"\nprofile {args.profile}: mean over seeds, points over table-only")
    for name in names:
        gains = [100 * (rows[f"{s}/{name}"]["test_acc"] - rows[f"{s}/table-only"]["test_acc"])
                 for s in sorted({k.split("/")[0] for k in rows}) if f"{s}/{name}" in rows]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"  {name:32s} {statistics.mean(gains):+5.1f} ± {sd:.1f} (n={len(gains)})")


if __name__ == "__main__":
    main()
