"""``dartscc-fast report``: the command line of :mod:`dartscc_fast.evaluation.report`."""
from __future__ import annotations

from dartscc_fast.evaluation.evaluate import RetrainConfig
from dartscc_fast.evaluation.report import RANDOM_DRAWS, make_report, markdown, write_report
from dartscc_fast.search import load_search


def register(sub) -> None:
    p = sub.add_parser("report", help="profiles A, B, C and a simplex grid vs baselines: Markdown, JSON, plots",
                       description="Derive and evaluate the profiles A, B, C and a grid over the simplex from a "
                                   "search, compare with baseline searches, write report.md, report.json and "
                                   "plots.")
    p.add_argument("--search", default="runs/search", help="the hypernetwork search")
    p.add_argument("--darts", default=None, help="a DARTS baseline search (kappa 0)")
    p.add_argument("--fbnet", nargs="*", default=[], help="FBNet-style fixed-kappa searches")
    p.add_argument("--grid", type=int, default=4, help="simplex grid step 1/N")
    p.add_argument("--retrain-epochs", type=int, default=2, help="0: inherited weights only")
    p.add_argument("--retrain-max-steps", type=int, default=None, help="cap the steps of each retraining epoch")
    p.add_argument("--front-retrain", type=int, default=6,
                   help="family architectures to retrain for the front (two per baseline budget, then spread)")
    p.add_argument("--random-draws", type=int, default=RANDOM_DRAWS,
                   help="random architectures of matched latency retrained per profile (scored against their mean)")
    p.add_argument("--no-measure", action="store_true", help="skip measuring latency on this device")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/report")
    p.set_defaults(func=_main)


def _main(args) -> int:
    result = load_search(args.search)
    cfg = result.config
    loaders = cfg.loaders()
    baselines = {"darts": [load_search(args.darts)] if args.darts else [],
                 "fbnet": [load_search(p) for p in args.fbnet]}
    rc = RetrainConfig(epochs=args.retrain_epochs, seed=cfg.seed, max_steps_per_epoch=args.retrain_max_steps) \
        if args.retrain_epochs > 0 else None
    report = make_report(result, loaders, baselines, args.grid, rc, args.front_retrain,
                         measure=not args.no_measure, threads=args.threads, random_draws=args.random_draws)
    paths = write_report(report, args.out)
    print(markdown(report))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0
