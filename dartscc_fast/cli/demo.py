"""``dartscc-fast demo``: the command line of :mod:`dartscc_fast.evaluation.demo`."""
from __future__ import annotations

from dartscc_fast.cli.search import add_guard_arguments
from dartscc_fast.evaluation.demo import DemoConfig, run_demo
from dartscc_fast.evaluation.demo import __doc__ as _DOC
from dartscc_fast.latency import NORMALISATIONS


def register(sub) -> None:
    d = DemoConfig()
    p = sub.add_parser("demo", help="profile, search, derive A/B/C, evaluate, report: the whole method in minutes",
                       description=_DOC.split("\n\n")[0])
    p.add_argument("--out", default=d.out_dir)
    p.add_argument("--limit", type=int, default=d.limit, help="images of the shipped set to use (0: all)")
    p.add_argument("--split", type=float, nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of the images in the seeded train / validation / test split")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of every search")
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: half the epochs")
    p.add_argument("--kappa", type=float, default=d.kappa,
                   help="the profiles' trade-off (with --no-strength: the one weight searched with)")
    p.add_argument("--kappa-max", type=float, default=d.kappa_max, help="the strength axis's strongest weight")
    p.add_argument("--no-strength", action="store_true", help="search one fixed --kappa instead of the axis")
    add_guard_arguments(p)
    p.add_argument("--normalise", choices=NORMALISATIONS, default=d.normalise,
                   help="the hypernetwork search's latency normalisation (see `dartscc-fast search --help`)")
    p.add_argument("--stride-balance", type=float, default=d.stride_balance,
                   help="with --normalise type-stride: 0 keeps type's prices, 1 gives pooling and convolution "
                        "the same total on each stride's edges")
    p.add_argument("--per-batch", action="store_true", help="draw S once per batch (the paper) instead of per sample")
    p.add_argument("--fbnet-kappas", type=float, nargs="*", default=list(d.fbnet_kappas))
    p.add_argument("--no-darts", action="store_true", help="skip the DARTS baseline")
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs)
    p.add_argument("--grid", type=int, default=d.grid)
    p.add_argument("--front-retrain", type=int, default=d.front_retrain)
    p.add_argument("--random-draws", type=int, default=d.random_draws,
                   help="random architectures of matched latency retrained per profile (scored against their mean)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="default: 2, or 1 while other work keeps a core busy (decided again at each phase)")
    p.add_argument("--profile-seconds", type=float, default=d.profile_seconds)
    p.add_argument("--latency-table", default=None, help="reuse this table instead of profiling")
    p.add_argument("--hypernet", default=None, choices=["linear", "pwl", "mlp"])
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = DemoConfig(out_dir=args.out, limit=args.limit or None, split=tuple(args.split), epochs=args.epochs,
                     warmup_epochs=args.warmup_epochs, kappa=args.kappa, kappa_max=args.kappa_max,
                     strength=not args.no_strength, sandwich=args.sandwich, normalise=args.normalise,
                     free_op_dropout=args.free_op_dropout,
                     stride_balance=args.stride_balance, per_sample=not args.per_batch,
                     fbnet_kappas=tuple(args.fbnet_kappas), darts=not args.no_darts,
                     retrain_epochs=args.retrain_epochs, grid=args.grid, front_retrain=args.front_retrain,
                     random_draws=args.random_draws,
                     threads=args.threads, profile_seconds=args.profile_seconds, latency_table=args.latency_table,
                     seed=args.seed, hypernet=args.hypernet, max_steps_per_epoch=args.max_steps_per_epoch)
    run_demo(cfg)
    return 0
