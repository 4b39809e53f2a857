"""``dartscc-fast profile`` (make a latency table) and ``dartscc-fast table`` (show, plot, merge, check)."""
from __future__ import annotations

import os
import sys
from typing import List

from dartscc_fast.latency.keys import BaseConfig, OpConfig, device_token, parse_key, space_configs
from dartscc_fast.latency.measure import calibrate, profile_space, time_genotype
from dartscc_fast.latency.roofline import PRESETS as DEVICES
from dartscc_fast.latency.runtimes import RUNTIMES, table_runtime
from dartscc_fast.latency.table import STATISTICS, LatencyTable
from dartscc_fast.nn.primitives import OP_TYPES, op_type
from dartscc_fast.space import PRESETS as SPACES
from dartscc_fast.space import Genotype, get_space
from dartscc_fast.validate import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Float, arg


def register(sub) -> None:
    p = sub.add_parser("profile", help="measure (or simulate) a latency table for a search space",
                       description="Time every op configuration of a search space on a device and write a "
                                   "latency table (JSON; schema in dartscc_fast.latency.table).")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, or sim:<preset> for a simulated device (%s)" % ", ".join(sorted(DEVICES)))
    p.add_argument("--space", nargs="+", default=["fmnist-paper"], choices=sorted(SPACES),
                   help="search space preset(s) (default: fmnist-paper)")
    p.add_argument("--batch", type=arg(POSITIVE_INT), default=64, help="batch size of the timed forward (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    p.add_argument("--threads", type=arg(POSITIVE_INT), default=None,
                   help="torch threads on the CPU (default: torch's)")
    p.add_argument("--passes", type=arg(POSITIVE_INT), default=1,
                   help="sweeps over all configurations, runs pooled (default 1)")
    p.add_argument("--max-seconds", type=arg(POSITIVE), default=1.0,
                   help="timing budget per configuration (default 1 s)")
    p.add_argument("--rel-ci", type=arg(Float(0, 1, lo_open=True)), default=0.01,
                   help="stop when the median's 95%% confidence half-width is below this fraction (default 0.01)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="wall: elapsed time (default); thread: the thread's CPU time, robust to other processes "
                        "on a shared machine (needs --threads 1)")
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default=None,
                   help="layout the ops and networks run in (default: channels_last on cpu, contiguous on cuda); "
                        "derived networks are measured in the table's layout")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="torch",
                   help="what runs the ops: torch (eager, default), onnxruntime or openvino (each configuration "
                        "exported to ONNX and timed in that runtime with its deployment optimisations; needs "
                        "dartscc_fast[onnx] or [openvino])")
    ctx = p.add_mutually_exclusive_group()
    ctx.add_argument("--in-context", dest="in_context", action="store_true", default=None,
                     help="time each op inside its network (the base with the op on every edge of its "
                          "configuration, minus the base; and, where edges leaving one node could share work, with "
                          "the op on one edge per node, to split off what they share): the default on the graph "
                          "runtimes, which fuse across ops and compute shared work once")
    ctx.add_argument("--isolated", dest="in_context", action="store_false",
                     help="time each op alone: the default on torch")
    p.add_argument("--calibrate", type=arg(NON_NEGATIVE_INT), default=None, metavar="N",
                   help="then time N random networks whole and fit predict = base + scale x ops + offset to them "
                        "(default 20 on a measured device; 0: none)")
    p.add_argument("--statistic", choices=STATISTICS, default="median",
                   help="which run of each op (and of each network the calibration times) the table predicts "
                        "with: the median (default) or the fastest, min (docs/latency.md, \"Which statistic\")")
    p.add_argument("--pace", action="store_true",
                   help="time the network base beside every configuration and scale each one's runs to the "
                        "profile's median pace: divides out a drift of the machine's speed (docs/latency.md)")
    p.add_argument("--no-base", action="store_true", help="do not time the networks' fixed part")
    p.add_argument("--append", action="store_true", help="merge into the table already at --out")
    p.add_argument("--out", help="the table file to write")
    p.add_argument("--list", action="store_true", help="only list the configurations that would be timed")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=_profile)
    _register_table(sub)


def _register_table(sub) -> None:
    t = sub.add_parser("table", help="show, plot, merge or check latency tables")
    tsub = t.add_subparsers(dest="table_command", metavar="ACTION")
    s = tsub.add_parser("show", help="print a table")
    s.add_argument("path")
    s.add_argument("--sort", choices=["shape", "median", "primitive"], default="shape")
    s.set_defaults(func=_show)
    pl = tsub.add_parser("plot", help="plot a table (needs matplotlib)")
    pl.add_argument("path")
    pl.add_argument("--out", required=True, help="image file to write (png, pdf, svg)")
    pl.set_defaults(func=_plot)
    m = tsub.add_parser("merge", help="merge tables measured separately")
    m.add_argument("paths", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--on-conflict", choices=["error", "first", "last"], default="error")
    m.add_argument("--force", action="store_true", help="merge tables of different devices or thread counts")
    m.set_defaults(func=_merge)
    c = tsub.add_parser("check", help="check that a table covers a search space")
    c.add_argument("path")
    c.add_argument("--space", nargs="+", default=["fmnist-paper"], choices=sorted(SPACES))
    c.add_argument("--batch", type=arg(POSITIVE_INT), default=None, help="default: the table's")
    c.set_defaults(func=_check)
    pd = tsub.add_parser("predict", help="predict (and optionally measure) a discrete architecture's latency")
    pd.add_argument("path")
    pd.add_argument("--genotype", required=True, help="a genotype as JSON (Genotype.to_json), or a file holding one")
    pd.add_argument("--space", default="fmnist-paper", choices=sorted(SPACES))
    pd.add_argument("--batch", type=arg(POSITIVE_INT), default=None, help="default: the table's")
    pd.add_argument("--measure", action="store_true", help="also time the whole network here (table's device)")
    pd.add_argument("--threads", type=arg(POSITIVE_INT), default=None)
    pd.set_defaults(func=_predict)
    ca = tsub.add_parser("calibrate", help="refit a table's whole-network offset on this machine, now",
                         description="Time random whole networks on the table's runtime here and refit the "
                                     "offset LatencyTable.predict adds (meta.calibration): what to run when "
                                     "measured latencies drift from the table's predictions.")
    ca.add_argument("path")
    ca.add_argument("--networks", type=arg(POSITIVE_INT), default=20, help="random networks to time (default 20)")
    ca.add_argument("--space", default=None, choices=sorted(SPACES),
                    help="default: the space of the table's calibration, else fmnist-paper")
    ca.add_argument("--threads", type=arg(POSITIVE_INT), default=None, help="default: the table's")
    ca.add_argument("--statistic", choices=STATISTICS, default=None,
                    help="predict with this run of each entry from now on (median or min), refitting the offset "
                         "to it (default: the table's)")
    ca.add_argument("--out", default=None, help="the table to write (default: PATH itself)")
    ca.set_defaults(func=_calibrate)
    pr = tsub.add_parser("presets", help="list the simulated devices and their sources")
    pr.set_defaults(func=_presets)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])


def _profile(args) -> int:
    spaces = [get_space(n) for n in args.space]
    if args.list:
        dev = device_token(args.device)
        keys = list(dict.fromkeys(c.key() for s in spaces for c in space_configs(s, args.batch, args.dtype, dev)))
        if not args.no_base:
            keys += [BaseConfig.of(s, args.batch, args.dtype, dev, inputs).key() for s in spaces
                     for inputs in ("all", "top2")]
        print(*keys, sep="\n")
        return 0
    if not args.out:
        raise ValueError("--out is required (the table file to write)")
    table = profile_space(spaces, args.device, args.batch, args.dtype, threads=args.threads,
                          include_base=not args.no_base, passes=args.passes, progress=not args.quiet,
                          max_seconds=args.max_seconds, rel_ci=args.rel_ci, clock=args.clock,
                          memory_format=args.memory_format, runtime=args.runtime, in_context=args.in_context,
                          calibrate_networks=_calibration_networks(args), statistic=args.statistic,
                          pace=args.pace)
    if args.append and os.path.exists(args.out):
        table = LatencyTable.load(args.out).merge(table, on_conflict="last")
    table.save(args.out)
    if not args.quiet:
        print(_format(table))
        print(f"wrote {len(table)} entries to {args.out}")
    return 0


def _calibration_networks(args) -> int:
    """--calibrate, or its default of 20 networks on a measured device (why: docs/latency.md, "Is the prediction
    right?"; the eager sum over-predicted by 17 %, by 5 % after the fit)."""
    if args.calibrate is not None or str(args.device).startswith("sim:"):
        return args.calibrate or 0
    return 20


def _calibration_text(c) -> str:
    if not c:
        return "  calibration: none (predict = base + sum of the ops)"
    fit = c.get("mape_on_fit", float("nan"))
    return (f"  calibration: predict = base + {c['scale']:.3f} x sum of the ops {c['offset_ms']:+.2f} ms, fitted on "
            f"{c['networks']} random {c.get('space')} networks (MAPE on them {fit:.1f} %)")


def _describe(key: str):
    c = parse_key(key)
    if isinstance(c, BaseConfig):
        return (f"(network base, {c.inputs})", "", "", "", c.batch, c.dtype, c.device)
    return (c.primitive, c.cin, f"{c.h}x{c.w}", c.stride, c.batch, c.dtype, c.device)


def _pace_text(pace) -> str:
    if not isinstance(pace, dict):
        return ", as measured (not paced)"
    return (f", paced: scaled to the anchor's {pace.get('anchor_ms', float('nan')):.2f} ms ({pace.get('probes')} "
            f"probes spread {pace.get('spread_pct', float('nan')):.1f} %, 10th to 90th percentile)")


def _split_text(table: LatencyTable) -> str:
    n = table.shared_work_entries()
    return f", shared work split once per source node ({n} entries)" if n else ""


def _format(table: LatencyTable, sort: str = "shape") -> str:
    m = table.meta
    lines = [f"latency table{' ' + table.source if table.source else ''}: {len(table)} entries, unit ms",
             f"  device {m.get('device')} ({m.get('device_name')}), threads {m.get('threads')}, "
             f"torch {m.get('torch')}, batch {m.get('batch')}, {m.get('dtype')}, {table.memory_format}, "
             f"spaces {', '.join(m.get('spaces', []))}, {m.get('date')}",
             f"  runtime {table_runtime(m)} {m.get('runtime_version') or m.get('torch') or ''}, provider "
             f"{m.get('provider') or m.get('device')}, optimisation {m.get('optimisation') or 'eager'}, ops timed "
             f"{m.get('op_timing') or 'isolated'}{_split_text(table)}",
             f"  conditions: load average {m.get('load_average')}, busy CPUs {m.get('busy_cpus')}, governor "
             f"{m.get('governor')}, clock {m.get('clock') or 'wall'}",
             _calibration_text(m.get("calibration")),
             f"  lookups read each entry's {table.statistic} run{_pace_text(m.get('pace'))}",
             f"  method: {m.get('method')}"]
    rows = []
    for key, e in table.entries.items():
        rows.append(_describe(key) + (e["median"], e.get("iqr", 0.0), e.get("runs", 0), e.get("min"), key))

    def order(r):
        if sort == "median":
            return (-r[7],)
        if sort == "primitive":
            return (str(r[0]), str(r[6]), r[4], str(r[1]).zfill(6), r[2], r[3])
        return (str(r[0]).startswith("(network base"), str(r[6]), r[4], str(r[1]).zfill(6), str(r[2]).zfill(9),
                str(r[3]), str(r[0]))
    rows.sort(key=order)
    head = ("primitive", "C", "HxW", "s", "batch", "dtype", "device", "median", "iqr", "runs", "min")
    body = [tuple(str(x) for x in r[:7]) + (f"{r[7]:.4f}", f"{r[8]:.4f}", str(r[9]),
                                            "-" if r[10] is None else f"{r[10]:.4f}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:>%d}" % w if i >= 7 or i in (1, 3, 4) else "{:<%d}" % w for i, w in enumerate(widths))
    lines.append(fmt.format(*head))
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def _show(args) -> int:
    print(_format(LatencyTable.load(args.path), args.sort))
    return 0


def _plot(args) -> int:
    table = LatencyTable.load(args.path)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install matplotlib (or dartscc_fast[plot])") from None
    colors = {"pool": "tab:blue", "identity": "tab:green", "conv": "tab:red", None: "tab:gray"}
    ops = sorted(((OpConfig.parse(k), e) for k, e in table.entries.items() if not k.startswith("base:")),
                 key=lambda ce: (ce[0].batch, ce[0].cin, -ce[0].h, ce[0].stride, ce[0].primitive))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(ops) + 1)))
    y = list(range(len(ops)))
    ax.barh(y, [e["median"] for _, e in ops], xerr=[e.get("iqr", 0.0) for _, e in ops],
            color=[colors[op_type(c.primitive)] for c, _ in ops])
    ax.set_yticks(y, [f"{c.primitive}  C{c.cin} {c.h}x{c.w} s{c.stride}" for c, _ in ops], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency (ms), bars: IQR")
    m = table.meta
    ax.set_title(f"{m.get('device')} ({m.get('device_name')}), batch {m.get('batch')}, {m.get('dtype')}",
                 fontsize=9)
    for t in OP_TYPES:
        ax.barh([0], [0], color=colors[t], label=t)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


def _merge(args) -> int:
    tables = [LatencyTable.load(p) for p in args.paths]
    out = tables[0].merge(*tables[1:], on_conflict=args.on_conflict, strict=not args.force)
    out.save(args.out)
    print(f"merged {len(args.paths)} tables into {args.out}: {len(out)} entries")
    return 0


def _check(args) -> int:
    table = LatencyTable.load(args.path)
    batch = args.batch if args.batch is not None else table.batch
    missing: List[str] = []
    for name in args.space:
        space = get_space(name)
        keys = [c.key() for c in space_configs(space, batch, table.dtype, table.device)]
        missing += [k for k in keys if k not in table]
        base = BaseConfig.of(space, batch, table.dtype, table.device).key()
        if base not in table:
            print(f"note: no network base for {name} ({base}): predictions will leave out the fixed part")
    if missing:
        print(f"{args.path}: {len(missing)} configuration(s) missing:", *missing, sep="\n  ", file=sys.stderr)
        return 1
    print(f"{args.path}: covers {', '.join(args.space)} at batch {batch} ({table.dtype}, {table.device})")
    return 0


def _predict(args) -> int:
    table = LatencyTable.load(args.path)
    text = open(args.genotype).read() if os.path.exists(args.genotype) else args.genotype
    try:
        genotype = Genotype.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--genotype is neither a genotype JSON nor a file holding one ({e})") from None
    space = get_space(args.space)
    batch = args.batch if args.batch is not None else table.batch
    pred = table.predict(space, genotype, batch=batch)
    print(f"predicted {pred:.3f} ms (base {table.base(space, genotype, batch=batch):.3f} ms + ops) on "
          f"{table.device}, batch {batch}")
    if args.measure:
        if table.device not in ("cpu", "cuda"):
            raise ValueError(f"cannot measure on the simulated device {table.device!r}")
        tm = time_genotype(space, genotype, batch, table.dtype, table.device, threads=args.threads,
                           max_seconds=5.0, memory_format=table.memory_format, runtime=table_runtime(table.meta))
        ms = tm.value(table.statistic)
        print(f"measured  {ms:.3f} ms ({table.statistic} of {tm.runs} runs, IQR {tm.iqr:.3f}); prediction error "
              f"{(pred - ms) / ms * 100:+.1f}%")
    return 0


def _calibrate(args) -> int:
    table = LatencyTable.load(args.path)
    old = table.meta.get("calibration") or {}
    if args.statistic:
        table = table.with_statistic(args.statistic)
    space = get_space(args.space or old.get("space") or "fmnist-paper")
    cal = calibrate(table, space, networks=args.networks, threads=args.threads)
    out = args.out or args.path
    table.save(out)
    was = f"{old['offset_ms']:+.2f} ms" if old else "none"
    print(f"calibration offset {cal['offset_ms']:+.2f} ms (was {was}), {table.statistic} runs, fitted on "
          f"{cal['networks']} random {space.name} networks timed here (MAPE on them {cal['mape_on_fit']:.1f} %); "
          f"wrote {out}")
    return 0


def _presets(args) -> int:
    for p in DEVICES.values():
        print(f"sim:{p.name}: {p.description}")
        print(f"    peak FP32 {p.peak('float32') / 1e9:.1f} GFLOP/s, FP16 {p.peak('float16') / 1e9:.1f} GFLOP/s, "
              f"bandwidth {p.bandwidth / 1e9:.1f} GB/s, overhead {p.overhead * 1e6:.0f} us per kernel")
        for s in p.sources:
            print(f"    source: {s}")
    return 0
