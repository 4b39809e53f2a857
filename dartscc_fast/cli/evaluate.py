"""``dartscc-fast evaluate``: the command line of :mod:`dartscc_fast.evaluation.evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

from dartscc_fast.evaluation.derive import derive
from dartscc_fast.evaluation.evaluate import RetrainConfig, inherited_accuracy, retrain
from dartscc_fast.search import load_search
from dartscc_fast.search.hypernet import PROFILES
from dartscc_fast.validate import NON_NEGATIVE_INT, STEPS, arg


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate derived architectures (inherited weights, retrained)",
                       description="Evaluate the architectures a search gives for some S: accuracy with the "
                                   "supernet's weights (quick) and retrained from scratch.")
    p.add_argument("--search", default="runs/search", help="search output directory or checkpoint")
    p.add_argument("--S", dest="S", action="append", default=None,
                   help="pool=..,identity=..,conv=.. or a profile A, B, C (repeatable; default A, B, C)")
    p.add_argument("--top2", action="store_true", help="DARTS rule: 2 strongest incoming edges per node")
    p.add_argument("--retrain-epochs", type=arg(NON_NEGATIVE_INT), default=2, help="0: inherited weights only")
    p.add_argument("--retrain-max-steps", type=arg(STEPS), default=None,
                   help="cap the steps of each retraining epoch (default: no cap)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_main)


def _main(args) -> int:
    result = load_search(args.search)
    cfg = result.config
    loaders = cfg.loaders()
    if len(loaders.test.dataset) == 0:
        raise ValueError(f"the test split of {args.search} is empty ({loaders.split}): no accuracy to report; "
                         "search with a --split that gives the test part images")
    rows = []
    for S in args.S or list(PROFILES):
        label = S.upper() if S.strip().upper() in PROFILES else ""
        d = derive(result, S, top2=args.top2, label=label)
        row = d.to_dict()
        row["inherited_acc"] = inherited_accuracy(result.supernet, result.space, d.genotype, loaders.test)
        msg = f"{label or d.S_text}: inherited-weight test accuracy {row['inherited_acc']:.2%}"
        if args.retrain_epochs > 0:
            r = retrain(result.space, d.genotype, loaders, RetrainConfig(epochs=args.retrain_epochs, seed=cfg.seed,
                                                                  max_steps_per_epoch=args.retrain_max_steps))
            row["retrain"] = r
            msg += f", retrained ({args.retrain_epochs} epochs) {r['test_acc']:.2%}"
        print(f"{msg}; {d.params:,} parameters; split: {loaders.split}")
        rows.append(row)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"split": loaders.split.as_dict(), "rows": rows}, indent=1) + "\n")
    return 0
