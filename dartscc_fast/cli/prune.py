"""``dartscc-fast prune``: the pruning variant end to end (see :mod:`dartscc_fast.prune.experiment`)."""
from __future__ import annotations

import argparse
import time

from dartscc_fast.prune.experiment import PruneConfig, run_prune
from dartscc_fast.prune.report import write_report

_D = PruneConfig()


def _floats(s: str):
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str):
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune a pretrained ResNet's residual blocks for every lambda (seed 000)",
                       description="Pretrain (or load from the cache) a ResNet, measure its prunable edges, "
                                   "estimate Theorem 1's Lambda, optimise gamma per lambda (part 1) and one "
                                   "lambda-conditioned hypernetwork (part 2); write a report and plots.")
    p.add_argument("--demo", action="store_true",
                   help="the default run on the shipped Fashion-MNIST subset (about 3.5 min on a loaded 2-core "
                        "machine, 2 min with the pretrained network cached)")
    p.add_argument("--tiny", action="store_true", help="a few-step smoke run on 800 images (CI)")
    p.add_argument("--dataset", default=_D.dataset, help="fmnist (shipped) or cifar10 (needs --root)")
    p.add_argument("--root", default=None, help="data directory (default: the shipped Fashion-MNIST subset)")
    p.add_argument("--model", default=_D.model, choices=["small", "resnet18"])
    p.add_argument("--widths", type=_ints, default=_D.widths, help="small ResNet stage widths, e.g. 8,16,32")
    p.add_argument("--blocks", type=int, default=_D.blocks, help="blocks per stage of the small ResNet")
    p.add_argument("--limit", type=int, default=None, help="use the first N images only")
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--pretrain-epochs", type=int, default=_D.pretrain_epochs)
    p.add_argument("--cache", default=None, help="checkpoint cache directory (default ~/.cache/dartscc_fast/prune)")
    p.add_argument("--no-cache", action="store_true", help="pretrain afresh and do not save")
    p.add_argument("--threads", type=int, default=_D.threads, help="torch threads for everything, timings included")
    p.add_argument("--lambdas", type=_floats, default=None, help="explicit part-1 lambdas, e.g. 0,0.1,0.2")
    p.add_argument("--n-lambdas", type=int, default=_D.n_lambdas)
    p.add_argument("--lambda-top", default=None,
                   help="top of the range before --top-factor: best (Lambda_best, the default), seed (the seed's "
                        "Lambda, often near 0: see the report) or a number")
    p.add_argument("--top-factor", type=float, default=_D.top_factor)
    p.add_argument("--steps", type=int, default=_D.steps, help="gamma steps per lambda (part 1)")
    p.add_argument("--hyper-steps", type=int, default=_D.hyper_steps, help="hypernetwork steps (part 2)")
    p.add_argument("--hyper-range", type=float, default=_D.hyper_range,
                   help="part 2 trains on lambda ~ U[0, hyper_range * Lambda] (Algorithm 1: 1.0)")
    p.add_argument("--soft", action="store_true", help="soft Gumbel samples instead of hard straight-through")
    p.add_argument("--per-batch", action="store_true", help="one gamma per batch instead of per sample")
    p.add_argument("--tau", type=float, default=_D.tau)
    p.add_argument("--out", default=_D.out, help="report directory")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_main)


def config_from_args(a) -> PruneConfig:
    kw = dict(dataset=a.dataset, root=a.root, model=a.model, widths=tuple(a.widths), blocks=a.blocks, limit=a.limit,
              seed=a.seed, pretrain_epochs=a.pretrain_epochs, cache_dir=a.cache, use_cache=not a.no_cache,
              threads=a.threads, lambdas=a.lambdas, n_lambdas=a.n_lambdas,
              lambda_top=a.lambda_top or _D.lambda_top,
              top_factor=a.top_factor, steps=a.steps, hyper_steps=a.hyper_steps, hyper_range=a.hyper_range,
              hard=not a.soft, per_sample=not a.per_batch, tau=a.tau, out=a.out)
    if a.tiny:
        kw.update(limit=a.limit or 800, widths=(4, 8, 16), blocks=2, pretrain_epochs=3, steps=3, hyper_steps=3,
                  n_lambdas=3, eval_points=3, warmup_max_steps=20, timing_seconds=0.05, max_enumerate=16)
        kw["pretrain_lr"] = 0.1
    return PruneConfig(**kw)


def _main(a) -> int:
    if a.demo and a.tiny:
        raise ValueError("choose --demo or --tiny, not both")
    cfg = config_from_args(a)
    t0 = time.perf_counter()
    report = run_prune(cfg)
    paths = write_report(report, cfg.out, plots=not a.no_plots)
    lam = report["lambda"]
    print(f"Lambda = {lam['Lambda']:.4g} nats per whole-network time (L_inf {lam['L_inf']:.4f}, "
          f"L_sup {lam['L_sup']:.4f}, T^T 1 {lam['T_sum']:.4f}); Lambda_best = {lam['Lambda_best']:.4g}")
    print(f"data: {report['split']['text']}")
    print(f"{'lambda':>8} {'part1':>8} {'acc':>6} {'ms':>6} | {'part2':>8} {'acc':>6} {'ms':>6}")
    p2 = {round(r["lambda"], 12): r for r in report["part2"]["rows"]}
    for r in report["part1"]:
        q = p2[round(r["lambda"], 12)]
        print(f"{r['lambda']:8.4g} {r['gamma']:>8} {100 * r['test_acc']:5.1f}% {r['measured_ms']:6.2f} | "
              f"{q['gamma']:>8} {100 * q['test_acc']:5.1f}% {q['measured_ms']:6.2f}")
    print(f"done in {time.perf_counter() - t0:.0f}s; report: " + ", ".join(str(p) for p in paths.values()))
    return 0
