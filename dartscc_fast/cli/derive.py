"""``dartscc-fast derive``: the command line of :mod:`dartscc_fast.evaluation.derive`."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dartscc_fast.evaluation.derive import derive, describe, export_model
from dartscc_fast.search import load_search
from dartscc_fast.search.hypernet import PROFILES
from dartscc_fast.space import DiscreteNetwork
from dartscc_fast.validate import POSITIVE_INT, arg


def register(sub) -> None:
    p = sub.add_parser("derive", help="the architecture of a trained search for a complexity vector S",
                       description="Derive the architecture for S from a trained hypernetwork, with no "
                                   "training: genotype JSON, parameters, ops by type, predicted and measured "
                                   "latency, and optionally the exported model.")
    p.add_argument("--search", default="runs/search", help="search output directory or checkpoint")
    p.add_argument("--S", dest="S", action="append", required=True,
                   help="pool=..,identity=..,conv=.. (or a profile A, B, C); repeat for several")
    p.add_argument("--kappa", type=float, default=None,
                   help="the trade-off on the search's strength axis, in [0, kappa_max] (default: the search's)")
    p.add_argument("--top2", action="store_true", help="keep the 2 strongest incoming edges per node (DARTS)")
    p.add_argument("--measure", action="store_true", help="also time the network on this device")
    p.add_argument("--threads", type=arg(POSITIVE_INT), default=None, help="torch threads for the timing")
    p.add_argument("--out", default=None, help="directory for genotype JSON (and exports)")
    p.add_argument("--export", choices=["torchscript", "onnx"], default=None, help="export the discrete model")
    p.set_defaults(func=_main)


def _main(args) -> int:
    result = load_search(args.search)
    out = Path(args.out) if args.out else None
    for i, S in enumerate(args.S):
        label = S.upper() if S.strip().upper() in PROFILES else ""
        d = derive(result, S, top2=args.top2, measure=args.measure, threads=args.threads, label=label,
                   kappa=args.kappa)
        print(describe(d))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            name = label or f"arch{i}"
            (out / f"{name}.json").write_text(json.dumps(d.to_dict(), indent=1) + "\n")
            print(f"  genotype: {out / (name + '.json')}")
            if args.export:
                torch.manual_seed(0)
                model = DiscreteNetwork(result.space, d.genotype)
                ext = ".pt" if args.export == "torchscript" else ".onnx"
                print(f"  exported: {export_model(model, result.space, out / (name + ext), args.export)}")
    return 0
