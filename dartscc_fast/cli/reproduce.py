"""``dartscc-fast reproduce``: the command line of :mod:`dartscc_fast.evaluation.reproduce`."""
from __future__ import annotations

from dartscc_fast.cli.search import add_guard_arguments
from dartscc_fast.evaluation.reproduce import ReproduceConfig, run_reproduce
from dartscc_fast.evaluation.reproduce import __doc__ as _DOC
from dartscc_fast.latency import NORMALISATIONS


def register(sub) -> None:
    d = ReproduceConfig()
    p = sub.add_parser("reproduce", help="the seeds' protocol over several seeds and tables: mean ± sd of everything",
                       description=_DOC.split("\n\n")[0])
    p.add_argument("--out", default=d.out_dir)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--limit", type=int, default=0, help="images of the shipped set to use (0: all)")
    p.add_argument("--split", type=float, nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of every search")
    p.add_argument("--warmup-epochs", type=int, default=None, help="default: half the epochs")
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs)
    p.add_argument("--fbnet-kappas", type=float, nargs="*", default=list(d.fbnet_kappas))
    p.add_argument("--no-darts", action="store_true")
    p.add_argument("--grid", type=int, default=d.grid)
    p.add_argument("--front-retrain", type=int, default=d.front_retrain)
    p.add_argument("--random-draws", type=int, default=d.random_draws,
                   help="random architectures of matched latency retrained per profile (scored against their mean)")
    p.add_argument("--table-threads", type=int, nargs="+", default=list(d.table_threads),
                   help="thread counts the seeds' tables are profiled at, in turn")
    p.add_argument("--threads", type=int, default=None,
                   help="training threads (default: as the demo decides, from the load at each phase)")
    p.add_argument("--kappa", type=float, default=None, help="the profiles' trade-off (default: the search's)")
    p.add_argument("--extra-kappas", type=float, nargs="*", default=list(d.extra_kappas),
                   help="the profiles at these trade-offs too, from the same searches (e.g. 5; 330-460 s a seed each)")
    p.add_argument("--kappa-max", type=float, default=None)
    p.add_argument("--no-strength", action="store_true", help="one fixed --kappa per search, as the seeds")
    add_guard_arguments(p)
    p.add_argument("--normalise", choices=NORMALISATIONS, default=d.normalise,
                   help="the hypernetwork search's latency normalisation (see `dartscc-fast search --help`)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--retrain-max-steps", type=int, default=None)
    p.add_argument("--fresh", action="store_true", help="refuse to read back earlier seeds (default: resume)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = ReproduceConfig(out_dir=args.out, seeds=tuple(args.seeds), limit=args.limit or None, split=tuple(args.split),
                          epochs=args.epochs, warmup_epochs=args.warmup_epochs, retrain_epochs=args.retrain_epochs,
                          fbnet_kappas=tuple(args.fbnet_kappas), darts=not args.no_darts, grid=args.grid,
                          front_retrain=args.front_retrain, random_draws=args.random_draws,
                          table_threads=tuple(args.table_threads),
                          threads=args.threads, kappa=args.kappa, extra_kappas=tuple(args.extra_kappas),
                          kappa_max=args.kappa_max,
                          strength=not args.no_strength, sandwich=args.sandwich, free_op_dropout=args.free_op_dropout,
                          normalise=args.normalise,
                          max_steps_per_epoch=args.max_steps_per_epoch,
                          retrain_max_steps=args.retrain_max_steps, resume=not args.fresh)
    run_reproduce(cfg)
    return 0
