"""``dartscc-fast derive``: the architecture of a trained search for an S (and kappa), or for a budget in ms."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dartscc_fast.evaluation.budget import STRENGTH_LEVELS, derive_for_budget
from dartscc_fast.evaluation.derive import Derived, derive, describe, export_model
from dartscc_fast.evaluation.evaluate import RetrainConfig
from dartscc_fast.latency.table import LatencyTable
from dartscc_fast.search import load_search
from dartscc_fast.search.hypernet import PROFILES
from dartscc_fast.space import DiscreteNetwork
from dartscc_fast.validate import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, arg

EXPORTS = {"torchscript": ".pt", "onnx": ".onnx"}


def register(sub) -> None:
    p = sub.add_parser("derive", help="the architecture of a trained search for an S, or for a latency budget",
                       description="Derive the architecture for S (and kappa) from a trained hypernetwork, or the "
                                   "most accurate one of its family within a latency budget, with no training: "
                                   "genotype JSON, parameters, ops by type, predicted and measured latency, and "
                                   "optionally the exported model.")
    p.add_argument("--search", default="runs/search", help="search output directory or checkpoint")
    p.add_argument("--S", dest="S", action="append", default=None,
                   help="pool=..,identity=..,conv=.. (or a profile A, B, C); repeat for several")
    p.add_argument("--budget-ms", type=arg(POSITIVE), nargs="+", default=None, metavar="T",
                   help="latency budgets (ms, on the search's table): for each, the family's architecture with the "
                        "best validation accuracy (supernet weights) whose predicted latency is within it")
    p.add_argument("--grid", type=arg(POSITIVE_INT), default=6,
                   help="--budget-ms: the simplex grid's step is 1/GRID (default 6)")
    p.add_argument("--levels", type=arg(POSITIVE_INT), default=len(STRENGTH_LEVELS),
                   help="--budget-ms: the strength axis is walked at this many evenly spaced levels "
                        "(default %(default)s)")
    p.add_argument("--kappa", type=float, default=None,
                   help="--S: the trade-off on the search's strength axis, in [0, kappa_max] (default: the search's)")
    p.add_argument("--top2", action="store_true", help="keep the 2 strongest incoming edges per node (DARTS)")
    p.add_argument("--measure", action="store_true", help="also time the network on this device")
    p.add_argument("--table", default=None,
                   help="with --budget-ms: predict and measure on this latency table instead of the search's "
                        "(e.g. one from `dartscc-fast profile --runtime onnxruntime`)")
    p.add_argument("--conservative", action="store_true",
                   help="with --budget-ms: the top of the predicted interval (the table's spreads) must fit the "
                        "budget, not the prediction alone")
    p.add_argument("--retrain", type=arg(NON_NEGATIVE_INT), default=0, metavar="EPOCHS",
                   help="with --budget-ms: retrain the pick and the dearest architecture within the budget for "
                        "EPOCHS epochs, and keep the dearer unless the other is better on the validation split "
                        "by more than 2 SE (the supernet's ranking favours cheap architectures: docs/design.md)")
    p.add_argument("--threads", type=arg(POSITIVE_INT), default=None, help="torch threads for the timing")
    p.add_argument("--out", default=None, help="directory for genotype JSON (and exports)")
    p.add_argument("--export", choices=[*EXPORTS, "both"], default=None,
                   help="export the discrete model (with --budget-ms and --out: default both)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if (args.S is None) == (args.budget_ms is None):
        raise ValueError("give --S (one or more complexity vectors) or --budget-ms (one or more budgets), not both")
    result = load_search(args.search)
    out = Path(args.out) if args.out else None
    if args.budget_ms is not None:
        levels = [i / max(args.levels - 1, 1) for i in range(args.levels)]
        table = LatencyTable.load(args.table) if args.table else None
        picks = derive_for_budget(result, args.budget_ms, grid_steps=args.grid, levels=levels, measure=args.measure,
                                  threads=args.threads, table=table, conservative=args.conservative,
                                  retrain=RetrainConfig(epochs=args.retrain, seed=result.config.seed)
                                  if args.retrain else None)
        export = args.export or ("both" if out is not None else None)
        for p in picks:
            print(_budget_text(p))
            _write(out, f"budget{p.budget_ms:g}ms", p.to_dict(), result, p.derived, export)
        return 0
    for i, S in enumerate(args.S):
        label = S.upper() if S.strip().upper() in PROFILES else ""
        d = derive(result, S, top2=args.top2, measure=args.measure, threads=args.threads, label=label,
                   kappa=args.kappa)
        print(describe(d))
        _write(out, label or f"arch{i}", d.to_dict(), result, d, args.export)
    return 0


def _budget_text(p) -> str:
    fit = "fit (the top of their interval)" if p.conservative else "fit"
    how = "of the supernet's pick and the dearest, both retrained, the dearer unless the other is better on " \
          "the validation split by more than 2 SE" \
        if p.retrained is not None else "the most accurate on the validation split"
    head = f"budget {p.budget_ms:g} ms: {p.candidates} architectures of the family {fit}; {how} " \
           f"(supernet weights, {p.val_acc:.1%}):"
    lines = [head, describe(p.derived),
             f"  predicted interval: {p.predicted_ms - p.spread_ms:.2f}-{p.predicted_ms + p.spread_ms:.2f} ms "
             f"(the table's spreads)"]
    if p.retrained is not None:
        r, o = p.retrained, p.rival
        lines.append(f"  retrained {r['epochs']} epochs: validation {r['val_acc']:.1%}, test {r['test_acc']:.1%}"
                     + ("" if o is None else f"; the other candidate (S = {o['S']}, {o['predicted_ms']:.2f} ms): "
                                             f"validation {o['val_acc']:.1%}, test {o['test_acc']:.1%}"))
    if p.meets_budget is not None:
        lines.append(f"  measured {p.derived.measured_ms:.2f} ms: {'within' if p.meets_budget else 'OVER'} the "
                     f"budget of {p.budget_ms:g} ms")
    return "\n".join(lines)


def _write(out, name: str, record: dict, result, d: Derived, export) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"  genotype: {out / (name + '.json')}")
    for fmt in (EXPORTS if export == "both" else [export] if export else []):
        torch.manual_seed(0)
        model = DiscreteNetwork(result.space, d.genotype)
        try:
            print(f"  exported: {export_model(model, result.space, out / (name + EXPORTS[fmt]), fmt)}")
        except ValueError as e:  # ONNX without the onnx package: the other formats still come out
            if export != "both":
                raise
            print(f"  not exported as {fmt}: {e}")
