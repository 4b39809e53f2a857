"""``dartscc-fast search``: train the supernet and the hypernetwork; the SearchConfig fields as options."""
from __future__ import annotations

import argparse
import os

from dartscc_fast.latency import NORMALISATIONS
from dartscc_fast.search import SearchConfig, load_search, run_search
from dartscc_fast.search.config import SEARCH_CHECKS
from dartscc_fast.validate import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, STEPS, arg


def add_guard_arguments(p) -> None:
    """The hypernetwork search's guards, as ``search``, ``demo`` and ``reproduce`` all take them."""
    p.add_argument("--sandwich", action=argparse.BooleanOptionalAction, default=None,
                   help="every search step also trains the accurate end, t = 0, on the same batch (twice the "
                        "step's work after the warm-up; default: on with the strength axis)")
    p.add_argument("--free-op-dropout", type=arg(SEARCH_CHECKS["free_op_dropout"]),
                   default=SearchConfig.free_op_dropout,
                   help="drop a drawn pool or stride-1 identity from the supernet with this probability at the start, "
                        "decayed as P-DARTS decays its skip dropout (default: %(default)s, off)")


def add_config_arguments(p, defaults: SearchConfig = SearchConfig()) -> None:
    """The SearchConfig fields as command-line options (shared by `search` and `demo`)."""
    d = defaults
    p.add_argument("--space", default=d.space, help="search space preset (fmnist-paper, darts-cifar)")
    p.add_argument("--channels", type=arg(POSITIVE_INT), default=None, help="override the space's initial channels C")
    p.add_argument("--data", default=d.data, help="fmnist or cifar10")
    p.add_argument("--data-root", default=d.data_root, help="data directory (default: the shipped subset)")
    p.add_argument("--limit", type=arg(SEARCH_CHECKS["limit"]), default=d.limit, help="use only the first N images")
    p.add_argument("--split", type=arg(FRACTION), nargs=3, default=d.split, metavar=("TRAIN", "VAL", "TEST"),
                   help="fractions of the images in the seeded train / validation / test split")
    p.add_argument("--epochs", type=arg(POSITIVE_INT), default=d.epochs, help="in all, warm-up included")
    p.add_argument("--warmup-epochs", type=arg(NON_NEGATIVE_INT), default=None,
                   help="train the weights alone first, on uniformly drawn architectures (default: half the epochs)")
    p.add_argument("--batch-size", type=arg(POSITIVE_INT), default=d.batch_size, help="per process")
    p.add_argument("--max-steps-per-epoch", type=arg(STEPS), default=d.max_steps_per_epoch,
                   help="cap the steps of each epoch (default: no cap)")
    p.add_argument("--hypernet", default=d.hypernet, choices=["linear", "pwl", "mlp", "constant"])
    p.add_argument("--per-sample", action="store_true", help="S and Gumbel noise per sample (DARTS-CC)")
    p.add_argument("--fixed-S", default=d.fixed_S, help="train for one fixed S instead of S ~ Dirichlet(1)")
    p.add_argument("--kappa", type=arg(NON_NEGATIVE), default=d.kappa,
                   help="weight of the normalised latency term: with the strength axis, the trade-off derive and "
                        "report take by default; with --no-strength, the one weight searched with")
    p.add_argument("--no-strength", action="store_true",
                   help="search one fixed --kappa (the seeds) instead of every kappa in [0, --kappa-max]")
    p.add_argument("--kappa-max", type=float, default=d.kappa_max,
                   help="the strength axis's strongest latency weight (t = 1)")
    p.add_argument("--strength-knots", type=int, default=d.strength_knots,
                   help="hypernetworks interpolated along the strength axis")
    p.add_argument("--strength-zero-share", type=arg(FRACTION), default=d.strength_zero_share,
                   help="share of the strength draws at t = 0 exactly (no latency term); the rest uniform")
    add_guard_arguments(p)
    p.add_argument("--latency-table", default=d.latency_table, help="JSON table from `dartscc-fast profile`")
    p.add_argument("--normalise", choices=NORMALISATIONS, default=d.normalise,
                   help="divide L by the uniform or the all-cheapest architecture's latency, or each operation "
                        "type's columns by that type's (S alone then prices a type); type-stride: type, then "
                        "pooling and convolution drawn towards the same total on each stride's edges; "
                        "type-cell: type-stride, with pooling and convolution priced in each cell type apart")
    p.add_argument("--stride-balance", type=arg(FRACTION), default=d.stride_balance,
                   help="type-stride, type-cell: 0 keeps type's prices, 1 gives pooling and convolution the same total "
                        "on each stride's edges")
    p.add_argument("--latency-device", default=d.latency_device,
                   help="without a table: simulated device sim:<preset> (default sim:mobile-cpu)")
    p.add_argument("--tau", type=arg(POSITIVE), nargs=2, default=(d.tau_start, d.tau_end), metavar=("START", "END"))
    p.add_argument("--tau-schedule", choices=["linear", "exp"], default=d.tau_schedule)
    p.add_argument("--soft", action="store_true", help="soft Gumbel-Softmax (every op runs) instead of hard")
    p.add_argument("--protocol", choices=["single", "bilevel"], default=d.protocol)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer)
    p.add_argument("--lr-w", type=arg(POSITIVE), default=d.lr_w, help="the weights' learning rate (cosine from it)")
    p.add_argument("--lr-a", type=arg(POSITIVE), default=d.lr_a, help="the hypernetwork's learning rate")
    p.add_argument("--grad-clip", type=arg(POSITIVE), default=d.grad_clip, help="the weights' gradient-norm clip")
    p.add_argument("--seed", type=arg(NON_NEGATIVE_INT), default=d.seed)
    p.add_argument("--checkpoint-every", type=arg(POSITIVE_INT), default=d.checkpoint_every,
                   help="also checkpoint every N steps within an epoch (as well as at each epoch's end)")
    p.add_argument("--log", choices=["csv", "tensorboard", "none"], default=d.log)


def config_from_args(args, out_dir: str) -> SearchConfig:
    return SearchConfig(
        space=args.space, space_overrides={"C": args.channels} if args.channels is not None else {}, data=args.data,
        data_root=args.data_root, limit=args.limit, split=tuple(args.split), epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
        max_steps_per_epoch=args.max_steps_per_epoch, hypernet=args.hypernet, per_sample=args.per_sample,
        fixed_S=args.fixed_S, kappa=args.kappa, strength=not args.no_strength and args.hypernet != "constant",
        kappa_max=args.kappa_max, strength_knots=args.strength_knots,
        strength_zero_share=args.strength_zero_share,
        sandwich=args.sandwich, free_op_dropout=args.free_op_dropout,
        latency_table=args.latency_table, normalise=args.normalise,
        stride_balance=args.stride_balance,
        latency_device=args.latency_device, tau_start=args.tau[0], tau_end=args.tau[1],
        tau_schedule=args.tau_schedule, hard=not args.soft, protocol=args.protocol, optimizer=args.optimizer,
        lr_w=args.lr_w, lr_a=args.lr_a, grad_clip=args.grad_clip, seed=args.seed, out_dir=out_dir, log=args.log,
        checkpoint_every=getattr(args, "checkpoint_every", SearchConfig.checkpoint_every))


def register(sub) -> None:
    p = sub.add_parser("search", help="train the supernet and the hypernetwork (one run, every S)",
                       description="Train the supernet and the hypernetwork alpha = H(S) with Gumbel-Softmax "
                                   "and the latency regulariser. Data-parallel under torchrun (gloo on CPU, "
                                   "nccl on GPU): torchrun --nproc_per_node 2 -m dartscc_fast.cli search ...")
    add_config_arguments(p)
    p.add_argument("--out", default="runs/search", help="output directory (checkpoint, log)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--force", action="store_true",
                   help="start a new search in an --out that holds one (replacing it at the first checkpoint); "
                        "with --resume, go on with a latency table other than the checkpoint's")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = config_from_args(args, args.out)
    path = run_search(cfg, resume=args.resume, force=args.force)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now; torchrun set RANK
        r = load_search(path)
        last = r.history[-1] if r.history else {}
        print(f"search done: {r.epoch} epochs, {r.seconds:.0f} s; last epoch loss {last.get('loss', 0):.3f}, "
              f"train acc {last.get('acc', 0):.2%}, expected latency {last.get('exp_lat', 0):.3f} "
              f"(normalised); checkpoint {path}")
    return 0
