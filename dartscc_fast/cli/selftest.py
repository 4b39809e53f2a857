"""``dartscc-fast selftest``: the command line of :mod:`dartscc_fast.ops.selftest`."""
from __future__ import annotations

from dartscc_fast.ops.selftest import OPS, run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "selftest", help="check every compiled op against the float64 reference on a device",
        description="Run every compiled op, forward and backward, against the float64 reference over a grid of "
                    "shapes, dtypes, layouts, per-edge and per-sample weights and strides; print a table per op. "
                    "Exits 1 if any case fails.")
    p.add_argument("--device", default="cpu", help="cpu (the CPU kernels), cuda or cuda:N (the CUDA kernels)")
    p.add_argument("--quick", action="store_true", help="the small grid the CUDA gate runs")
    p.add_argument("--torch-path", action="store_true",
                   help="check the torch path the CUDA gate falls back to instead of the kernels")
    p.add_argument("--op", action="append", choices=OPS, help="check only this op (repeatable)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=_main)


def _main(args) -> int:
    result = run(args.device, args.quick, impl="torch" if args.torch_path else "kernels", ops=args.op,
                 json_path=args.json)
    return 0 if result.passed else 1
