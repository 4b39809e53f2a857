"""Device microbenchmarks: time every op configuration of a search space, and whole networks.

A simulated device (``sim:<preset>``) is not timed: :func:`simulate_table` estimates its
table from the roofline model (:mod:`dartscc_fast.latency.roofline`).

Each configuration runs as the module a derived network uses (DARTS eval
ops: ``derived_op(primitive, C, stride)``, eval mode) on a fixed random
input ``[batch, C, H, W]``, under ``torch.inference_mode``, in the table's
memory format (channels_last on the CPU by default, see
:func:`default_memory_format`; derived networks are measured in the same one):

- warm-up: ``warmup`` runs, and at least 50 ms of them (caches, allocator,
  oneDNN primitive creation, CPU clocks);
- then timed runs, one forward each: ``time.perf_counter`` on the CPU (the
  torch thread count is set and recorded), CUDA events with synchronisation
  on a GPU; or, with ``clock='thread'`` (one thread only), the thread's CPU
  time, which a machine shared with other processes does not inflate: the
  time the op would take on an idle core;
- until the estimate is stable: the 95% confidence half-width of the median,
  ``1.57 * IQR / sqrt(runs)`` (McGill, Tukey & Larsen 1978), is below
  ``rel_ci`` of it, or ``max_runs`` runs, or ``max_seconds`` seconds;
- reported: the median, the interquartile range (the spread), the number of
  runs and the fastest run.

What runs the module is a runtime (:mod:`dartscc_fast.latency.runtimes`): eager torch by default, or
ONNX Runtime, where each configuration is exported to ONNX and run in a session with every graph
optimisation; there each op is timed by default in context (:func:`build_context_network`), since
the runtime fuses and shares work across ops that an op timed alone does not show, and where edges leaving
one node could share work, also with the op on one edge per node, which splits the op's cost into the work
the node's edges share and the work each adds (:func:`_shared_split`).

``passes > 1`` repeats the sweep over all configurations and pools the runs, so
a burst of load from another process lands on every configuration alike.

Before the first CPU measurement of a process, one ~30 MB block is allocated
and freed. glibc's malloc serves big blocks with mmap and raises that
threshold (and the heap-trim threshold, to twice it) to the largest block
freed so far; an op timed in a fresh process sees a low threshold, so every
run returns its intermediates to the OS and page-faults them back in (the
16-channel 28x28 sep_conv_3x3 at batch 64: 19.7 ms instead of 3.7 ms), which a
network that has run once, with its bigger tensors, does not. The block puts
both in that steady state.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from dartscc_fast._extension import BUILD_INFO
from dartscc_fast.latency._time import utc_now
from dartscc_fast.latency.keys import (
    BASE_INPUTS,
    BaseConfig,
    OpConfig,
    device_token,
    dtype_name,
    space_configs,
    torch_dtype,
)
from dartscc_fast.latency.pace import PROBE_RUNS, Pace, paced_runs, table_ref_ms
from dartscc_fast.latency.roofline import DevicePreset, estimate, get_preset, kernel_time_ms, kernels
from dartscc_fast.latency.runtimes import get_runtime
from dartscc_fast.latency.runtimes.base import num_threads  # noqa: F401  (its home before runtimes existed)
from dartscc_fast.latency.table import NO_SHARED_WORK, STATISTICS, LatencyTable
from dartscc_fast.nn.primitives import derived_op, shared_part
from dartscc_fast.progress import Progress
from dartscc_fast.space import DiscreteNetwork, Genotype, random_genotype


@dataclass
class Timing:
    """The runs of one benchmark, in ms."""
    times: List[float] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def iqr(self) -> float:
        q1, q3 = np.percentile(self.times, [25, 75])
        return float(q3 - q1)

    @property
    def min(self) -> float:
        return float(np.min(self.times))

    def value(self, statistic: str = "median") -> float:
        """The run a latency table reads: the median or the fastest (``LatencyTable.statistic``)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
        return self.min if statistic == "min" else self.median

    def rel_ci(self) -> float:
        """The 95% confidence half-width of the median, relative to it."""
        m = self.median
        return 1.57 * self.iqr / np.sqrt(self.runs) / m if m > 0 else 0.0

    def entry(self) -> Dict:
        return {"median": self.median, "iqr": self.iqr, "runs": self.runs, "min": self.min}


def _run_device(device: Union[str, torch.device]) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA device here; profile on the target "
                         "machine, or simulate it with --device sim:<preset>")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"can only measure on cpu or cuda, got {device!r}")
    return d


CLOCKS = ("wall", "thread")


def check_clock(clock: str, rt, threads: int) -> None:
    """Refuse a clock that cannot time ``rt`` computing with ``threads`` CPU threads (``rt`` a runtime of
    :mod:`dartscc_fast.latency.runtimes`: the thread clock only sees work done on the calling thread)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    if clock == "thread" and not rt.thread_clock_ok(threads):
        raise ValueError(f"clock='thread' measures the calling thread's CPU time: {rt.name} computes elsewhere "
                         f"with {threads} thread(s) on {rt.device.type}; use one CPU thread or clock='wall'")


_ALLOCATOR_WARM = False


def warm_allocator() -> None:
    """Allocate and free one ~30 MB block, once per process (see the module docstring)."""
    global _ALLOCATOR_WARM
    if not _ALLOCATOR_WARM:
        block = torch.empty(30 * 2 ** 20, dtype=torch.uint8)
        del block
        _ALLOCATOR_WARM = True


def time_callable(fn: Callable[[], object], device: Union[str, torch.device] = "cpu", warmup: int = 3,
                  min_runs: int = 10, max_runs: int = 300, max_seconds: float = 1.0, rel_ci: float = 0.01,
                  timing: Optional[Timing] = None, clock: str = "wall", check: bool = True) -> Timing:
    """Time ``fn()`` as the module docstring says; extends ``timing`` if given. ``check=False``: the caller
    has checked the clock against the runtime that computes ``fn``."""
    d = _run_device(device)
    if check:
        check_clock(clock, get_runtime("torch", d), torch.get_num_threads())
    cuda = d.type == "cuda"
    if not cuda:
        warm_allocator()
    now = time.thread_time if clock == "thread" else time.perf_counter
    timing = timing if timing is not None else Timing()
    with torch.inference_mode(), (torch.cuda.device(d) if cuda else contextlib.nullcontext()):
        t0 = time.perf_counter()
        n = 0
        while n < warmup or (time.perf_counter() - t0 < 0.05 and n < 50):
            fn()
            n += 1
        if cuda:
            torch.cuda.synchronize(d)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        first = timing.runs
        t_start = time.perf_counter()
        while True:
            if cuda:
                start.record()
                fn()
                end.record()
                end.synchronize()
                timing.times.append(float(start.elapsed_time(end)))
            else:
                a = now()
                fn()
                timing.times.append((now() - a) * 1e3)
            n = timing.runs - first
            if n >= min_runs and (n >= max_runs or time.perf_counter() - t_start >= max_seconds
                                  or timing.rel_ci() <= rel_ci):
                return timing


def device_name(device: Union[str, torch.device]) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Layouts a table can be measured in. A derived network runs in the table's layout, so that the
#: prediction and the measurement describe the same network.
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def default_memory_format(device: Union[str, torch.device]) -> str:
    """'channels_last' on the CPU, where oneDNN's depthwise convolutions and torch's pooling are
    vectorised over channels (measured here, batch 64, one thread: 16-channel 28x28 max_pool_3x3
    28.9 -> 4.7 ms, sep_conv_3x3 8.3 -> 6.3 ms; the fmnist-paper networks about 2x faster);
    'contiguous' (NCHW) elsewhere."""
    return "channels_last" if torch.device(device).type == "cpu" else "contiguous"


def check_memory_format(memory_format: Optional[str], device: Union[str, torch.device]) -> str:
    """The layout name to use: ``memory_format`` validated, or the device's default for None."""
    if memory_format is None:
        return default_memory_format(device)
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {sorted(MEMORY_FORMATS)}, got {memory_format!r}")
    return memory_format


def in_format(obj, memory_format: str):
    """A module or a 4-d input tensor converted to ``memory_format`` (a name of MEMORY_FORMATS)."""
    fmt = MEMORY_FORMATS[check_memory_format(memory_format, "cpu")]
    if isinstance(obj, torch.Tensor):
        return obj.contiguous(memory_format=fmt)
    return obj.to(memory_format=fmt)


def build_op(cfg: OpConfig, memory_format: str = "contiguous") -> nn.Module:
    """The module a derived network runs for this configuration (eval mode, on its device and dtype)."""
    if cfg.cin != cfg.cout:
        raise ValueError(f"{cfg.key()}: the DARTS primitives keep the channel count (cin == cout)")
    op = derived_op(cfg.primitive, cfg.cin, cfg.stride).eval().to(cfg.device, torch_dtype(cfg.dtype))
    return in_format(op, memory_format)


class FreeOp(nn.Module):
    """An edge that costs nothing itself: its input, or a strided view of it at stride 2."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]


def base_genotype(space, inputs: str = "all"):
    """The edge structure of a base network: every edge ('all') or the first two per node ('top2')."""
    nodes = [[("skip_connect", j) for j in range(2 + i)][:(None if inputs == "all" else 2)]
             for i in range(space.steps)]
    concat = list(range(2 + space.steps - space.multiplier, space.steps + 2))
    return Genotype(nodes, [list(n) for n in nodes], concat, list(concat))


def build_base_network(space, inputs: str = "all", dtype="float32", device="cpu",
                       memory_format: str = "contiguous") -> nn.Module:
    """The network's fixed part: stem, preprocessing, node sums, concatenation, pooling and
    classifier, with every edge a :class:`FreeOp`."""
    net = build_network(space, base_genotype(space, inputs), dtype, device, memory_format)
    for cell in net.cells:
        edges = [j for node in cell._nodes for _, j in node]
        for i, j in enumerate(edges):
            cell._ops[i] = FreeOp(2 if cell.reduction and j < 2 else 1)
    return net


def build_context_network(space, cfg: OpConfig, dtype="float32", device="cpu",
                          memory_format: str = "contiguous", once_per_source: bool = False) -> Tuple[nn.Module, int]:
    """The 'all' network base with every edge whose configuration is ``cfg`` running ``cfg``'s op, and how
    many edges that is: timed against the base, the op's cost in context (what a whole network pays for it,
    with the fusions and shared subexpressions a graph runtime finds across ops). ``once_per_source``: only
    the first such edge leaving each node runs it, so no two of them can share work (:func:`context_edges`)."""
    net = build_base_network(space, "all", dtype, device, memory_format)
    chosen = {(e.cell, e.src, e.dst) for e in context_edges(space, cfg, once_per_source)}
    for c, cell in enumerate(net.cells):
        k = 0
        for i, node in enumerate(cell._nodes):
            for _, j in node:
                if (c, j, i + 2) in chosen:
                    op = derived_op(cfg.primitive, cfg.cin, cfg.stride).eval()
                    cell._ops[k] = in_format(op.to(device, torch_dtype(dtype_name(dtype))), memory_format)
                k += 1
    return net, len(chosen)


def context_edges(space, cfg: OpConfig, once_per_source: bool = False) -> List:
    """The edges of the space whose configuration is ``cfg``'s (channels, size, stride); with
    ``once_per_source``, the first of them leaving each node."""
    edges = [e for e in space.edges() if (e.C, e.H, e.W, e.stride) == (cfg.cin, cfg.h, cfg.w, cfg.stride)]
    if not once_per_source:
        return edges
    first: Dict[Tuple[int, int], object] = {}
    for e in sorted(edges, key=lambda e: e.dst):
        first.setdefault((e.cell, e.src), e)
    return list(first.values())


def network_input(space, batch: int, dtype="float32", device="cpu", memory_format: str = "contiguous") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, space.in_channels, space.input_size, space.input_size, generator=g)
    return in_format(x.to(device=device, dtype=torch_dtype(dtype_name(dtype))), memory_format)


def build_network(space, genotype, dtype="float32", device="cpu", memory_format: str = "contiguous") -> nn.Module:
    torch.manual_seed(0)
    net = DiscreteNetwork(space, genotype).eval().to(device=device, dtype=torch_dtype(dtype_name(dtype)))
    return in_format(net, memory_format)


def _network_callables(space, genotypes, batch, dtype, device, threads, memory_format, runtime,
                       anchor_clock: Optional[str] = None):
    """The runtime, one forward callable per genotype's whole network and, with ``anchor_clock``, the probes of
    the space's anchor timed with that clock (:func:`_base_anchor`; else None)."""
    d = _run_device(device)
    rt = get_runtime(runtime, d, threads)
    fmt = check_memory_format(memory_format, d) if rt.uses_memory_format else "contiguous"
    x = network_input(space, batch, dtype, d, fmt)
    anchor = _base_anchor(space, batch, dtype, d, fmt, rt, anchor_clock) if anchor_clock else None
    return rt, [rt.prepare(build_network(space, g, dtype, d, fmt), x) for g in genotypes], anchor


def time_genotype(space, genotype, batch: int = 64, dtype="float32", device="cpu", threads: Optional[int] = None,
                  memory_format: Optional[str] = None, runtime: str = "torch", **timing_kw) -> Timing:
    """The measured forward time of a discrete architecture's whole network (time_callable's options),
    in ``memory_format`` (None: the device's default, as :func:`profile_space`), on ``runtime``
    (a name of :data:`~dartscc_fast.latency.runtimes.RUNTIMES`)."""
    rt, (fn,), _ = _network_callables(space, [genotype], batch, dtype, device, threads, memory_format, runtime)
    with rt.running() as n:
        check_clock(timing_kw.get("clock", "wall"), rt, n)
        return time_callable(fn, rt.timer_device, check=False, **timing_kw)


def time_genotypes(space, genotypes, batch: int = 64, dtype="float32", device="cpu", threads: Optional[int] = None,
                   memory_format: Optional[str] = None, rounds: int = 5, runs: int = 3,
                   clock: str = "wall", runtime: str = "torch", pace: Optional[List[float]] = None) -> List[Timing]:
    """Measured forward times of several whole networks, interleaved: ``rounds`` rounds, each timing
    ``runs`` forwards of every network in turn, runs pooled per network. A burst of load from another
    process, or a drift of the clock frequency, then lands on every network alike, so their order is
    what the machine says and not when each happened to run.

    ``pace``: a list to which the probes of the machine's pace are appended (:mod:`~dartscc_fast.latency.pace`:
    the network base timed before every round and after the last), so that the caller can scale these
    networks' runs to a reference pace; the runs returned are as measured."""
    if rounds < 1 or runs < 1:
        raise ValueError(f"rounds and runs must be >= 1, got {rounds}, {runs}")
    rt, fns, anchor = _network_callables(space, genotypes, batch, dtype, device, threads, memory_format, runtime,
                                         anchor_clock=clock if pace is not None else None)
    timings = [Timing() for _ in fns]
    with rt.running() as n:
        check_clock(clock, rt, n)
        for r in range(rounds + 1):
            if anchor is not None:
                pace.append(anchor.probe())
            for fn, tm in zip(fns, timings) if r < rounds else ():
                time_callable(fn, rt.timer_device, warmup=2 if r == 0 else 1, min_runs=runs, max_runs=runs,
                              timing=tm, clock=clock, check=False)
    return timings


def anchor_pace(fn: Callable[[], object], rt, clock: str = "wall") -> Pace:
    """Probes of the anchor ``fn`` (prepared on runtime ``rt``): :data:`~dartscc_fast.latency.pace.PROBE_RUNS`
    runs after one warm-up, read by the fastest."""
    return Pace(lambda: time_callable(fn, rt.timer_device, warmup=1, min_runs=PROBE_RUNS, max_runs=PROBE_RUNS,
                                      clock=clock, check=False).min)


def busy_cores(window: float = 1.0) -> tuple:
    """How many CPUs other work keeps busy now: (cores, how it was measured).

    Sampled from /proc/stat over `window` seconds (what runs now, unlike the
    load average, which still counts work that ended a minute ago); the
    1-minute load average where /proc/stat is missing.
    """
    def ticks():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v), idle

    try:
        t0, i0 = ticks()
        time.sleep(window)
        t1, i1 = ticks()
    except (OSError, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return load, "load average"
    busy = 1.0 - (i1 - i0) / max(t1 - t0, 1)
    return busy * (os.cpu_count() or 1), f"/proc/stat over {window:g} s"


def _warn_if_busy(device: torch.device, threads: int, clock: str) -> Optional[float]:
    """The 1-minute load average (recorded with the table); warns when other processes want the cores a
    wall-clock CPU run needs. A high load average is confirmed by :func:`busy_cores` first: it still
    counts work that ended up to a minute ago, such as the build just before a fresh install's demo."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = os.cpu_count() or 1
    limit = cpus - threads + 0.5
    if device.type == "cpu" and clock == "wall" and load > limit:
        busy, how = busy_cores(0.5)
        if busy > limit:
            warnings.warn(f"the machine is busy ({busy:.1f} of {cpus} CPUs, {how}; load average {load:.1f}) and "
                          f"the profile uses {threads} thread(s): wall-clock timings will be inflated and "
                          f"erratic. Profile on an idle machine, or use threads=1 with clock='thread' (CLI: "
                          f"--threads 1 --clock thread)", stacklevel=3)
    return round(load, 2)


def _method(device: torch.device, warmup, min_runs, max_runs, max_seconds, rel_ci, passes, clock,
            runtime: str = "torch") -> str:
    timer = "CUDA events around the call, then event synchronisation" if device.type == "cuda" else \
        ("time.thread_time (the thread's CPU time) around the call" if clock == "thread" else
         "time.perf_counter around the call")
    call = ("one forward of the eval-mode module on a fixed input [batch, C, H, W] under torch.inference_mode"
            if runtime == "torch" else
            f"one run of the module exported to ONNX, in a {runtime} session, on a fixed input [batch, C, H, W]")
    return (f"{timer}; {call}; {warmup} warm-up runs (and at least 50 ms); then runs until the 95% "
            f"confidence half-width of the median (1.57 IQR / sqrt(runs)) is below {rel_ci:.1%} of it, or "
            f"{max_runs} runs, or {max_seconds} s (3x for network bases); {passes} pass(es) over all "
            f"configurations, runs pooled; median reported, spread = interquartile range")


def profile_space(spaces, device: Union[str, torch.device] = "cpu", batch: int = 64, dtype="float32",
                  threads: Optional[int] = None, include_base: bool = True, passes: int = 1,
                  progress: bool = True, warmup: int = 3, min_runs: int = 10, max_runs: int = 300,
                  max_seconds: float = 1.0, rel_ci: float = 0.01, clock: str = "wall",
                  memory_format: Optional[str] = None, runtime: str = "torch",
                  in_context: Optional[bool] = None, calibrate_networks: int = 0,
                  statistic: str = "median", pace: bool = False) -> LatencyTable:
    """Measure every op configuration of the space(s) (and each space's network base) on ``device``.

    ``device`` 'sim:<preset>' builds the table from the roofline model instead.
    ``memory_format``: the layout the ops and networks run in, 'channels_last' or 'contiguous'
    (None: :func:`default_memory_format` of the device); recorded in the table's meta, and the
    layout derived networks are measured in. ``runtime``: what runs them, 'torch' (eager) or
    'onnxruntime' (exported to ONNX and timed in an ONNX Runtime session;
    :mod:`dartscc_fast.latency.runtimes`); recorded in the meta with its version, provider,
    threads and optimisation level. ``in_context``: time each op in its network rather than alone
    (:func:`build_context_network`: the base with every edge of the configuration running the op,
    minus the base, per edge); None: in context on graph runtimes, which fuse across ops, alone on
    eager torch (docs/latency.md compares both). ``calibrate_networks``: then fit the whole-network
    calibration on that many random networks of the first space (:func:`calibrate`; 0: none).
    ``statistic``: the run of each entry lookups read, 'median' or the fastest, 'min' (both are recorded).
    ``pace``: scale each configuration's runs to the profile's median pace (:mod:`~dartscc_fast.latency.pace`),
    keeping them as measured under 'unpaced' (:meth:`LatencyTable.unpaced`) and the pace in ``meta['pace']``.
    """
    _check_statistic(statistic, device)
    spaces = list(spaces) if isinstance(spaces, (list, tuple)) else [spaces]
    dtype = dtype_name(dtype)
    if str(device).startswith("sim:"):
        return _simulated(spaces, str(device), batch, dtype, include_base, calibrate_networks)
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    d = _run_device(device)
    rt = get_runtime(runtime, d, threads)
    in_context = (not rt.uses_memory_format) if in_context is None else bool(in_context)
    fmt = check_memory_format(memory_format, d) if rt.uses_memory_format else "contiguous"
    tok = device_token(d)
    jobs = _profile_jobs(spaces, batch, dtype, tok, include_base or in_context, in_context)
    timing_kw = dict(warmup=warmup, min_runs=min_runs, max_runs=max_runs, max_seconds=max_seconds / passes,
                     rel_ci=rel_ci, clock=clock, check=False)
    with rt.running() as n_threads:
        check_clock(clock, rt, n_threads)
        conditions = measurement_conditions(d, n_threads, clock)
        anchor = _base_anchor(spaces[0], batch, dtype, d, fmt, rt, clock) if pace else None
        timings, paced = _time_jobs(jobs, passes, progress, rt, f"profiling {tok} ({rt.name})",
                                    lambda cfg, space: _job_callable(cfg, space, batch, dtype, d, fmt, timing_kw, rt,
                                                                     in_context), anchor)
    meta = dict(_table_meta(d, tok, n_threads, rt, batch, dtype, fmt, spaces), **conditions, clock=clock,
                method=_method(rt.timer_device, warmup, min_runs, max_runs, max_seconds, rel_ci, passes, clock,
                                              rt.name),
                op_timing="in context" if in_context else "isolated", statistic=statistic)
    if anchor is not None:
        meta["pace"] = anchor.meta()
    t = LatencyTable(meta=meta)
    for cfg, space in jobs:
        if isinstance(cfg, OpConfig) or (include_base and isinstance(cfg, BaseConfig)):
            t.add(cfg, **_entry_of(cfg, space, timings, paced,
                                   BaseConfig.of(space, batch, dtype, tok, "all").key() if in_context else None))
    if calibrate_networks:
        calibrate(t, spaces[0], calibrate_networks, threads=n_threads, clock=clock)
    return t


def _simulated(spaces, device: str, batch: int, dtype: str, include_base: bool, calibrate_networks: int):
    if calibrate_networks:
        raise ValueError(f"a simulated device ({device}) cannot time whole networks, so its table cannot be "
                         "calibrated: calibrate on a measured device (cpu or cuda), or pass 0 networks")
    return simulate_table(spaces, device, batch, dtype, include_base)


def _base_anchor(space, batch: int, dtype: str, d: torch.device, fmt: str, rt, clock: str) -> Pace:
    """Probes of the space's network base, the anchor of :mod:`~dartscc_fast.latency.pace`, on runtime ``rt``."""
    return anchor_pace(rt.prepare(build_base_network(space, "all", dtype, d, fmt),
                                  network_input(space, batch, dtype, d, fmt)), rt, clock)


def _check_statistic(statistic: str, device) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if str(device).startswith("sim:") and statistic != "median":
        raise ValueError(f"a simulated device ({device}) has one computed time per op, not runs: its table "
                         f"reads the median only, got statistic {statistic!r}")


def _time_jobs(jobs, passes: int, progress: bool, rt, desc: str, make,
               anchor: Optional[Pace] = None) -> Tuple[Dict[str, Timing], Optional[Dict[str, Timing]]]:
    """Time every job ``passes`` times over, runs pooled; ``make(cfg, space)`` gives (callable, timing options).
    Returns the timings and, with an ``anchor``, probed before the first job and after every job, the same runs
    at the profile's median pace (else None)."""
    timings: Dict[str, Timing] = {}
    blocks: Dict[str, List[Tuple[List[float], float]]] = {}
    fns = {}
    bar = Progress(total=len(jobs) * passes, desc=desc, enabled=None if progress else False)
    if anchor is not None:
        anchor.probe()
    for _ in range(passes):
        for cfg, space in jobs:
            key = cfg.key()
            if key not in fns:
                fns[key] = make(cfg, space)
            fn, kw = fns[key]
            first = timings[key].runs if key in timings else 0
            timings[key] = time_callable(fn, rt.timer_device, timing=timings.get(key), **kw)
            if anchor is not None:
                before = anchor.probes[-1]
                blocks.setdefault(key, []).append((timings[key].times[first:], (before + anchor.probe()) / 2))
            bar.set(last=f"{_job_name(cfg)} {timings[key].median:.3g}ms")
            bar.update()
    bar.close()
    if anchor is None:
        return timings, None
    ref = anchor.ref_ms()
    return timings, {key: Timing(paced_runs(b, ref)) for key, b in blocks.items()}


def _entry_of(cfg, space, timings: Dict[str, Timing], paced: Optional[Dict[str, Timing]],
              base_key: Optional[str]) -> Dict:
    """A configuration's table entry: from the ``paced`` timings where there are some, with the measured ones
    under 'unpaced'; else from ``timings``."""
    if not paced:
        return _measured_entry(cfg, space, timings, base_key)
    raw = _measured_entry(cfg, space, timings, base_key)
    unpaced = {k: raw[k] for k in ("median", "iqr", "min", "shared", "per_edge") if k in raw}
    return dict(_measured_entry(cfg, space, paced, base_key), unpaced=unpaced)


def _measured_entry(cfg, space, timings: Dict[str, Timing], base_key: Optional[str]) -> Dict:
    """A configuration's table entry from the timings: its own, or in context (``base_key``: the key of the base
    network it was timed against) the difference of its context network and the base, per edge (at least 0),
    and, where the once-per-source network was timed too, that difference split into the work shared once per
    source node and the work each edge adds (:func:`_shared_split`)."""
    tm = timings[cfg.key()]
    if base_key is None or not isinstance(cfg, OpConfig):
        return tm.entry()
    base = timings[base_key]
    n = len(context_edges(space, cfg))
    entry = {"median": max(0.0, (tm.median - base.median) / n), "iqr": (tm.iqr + base.iqr) / n,
             "runs": min(tm.runs, base.runs), "min": max(0.0, (tm.min - base.min) / n), "edges": n,
             "context_median": tm.median}
    s = len(context_edges(space, cfg, True))
    once = timings.get(_OncePerSource(cfg).key())
    if once is not None:
        entry.update(_shared_split(cfg, s, n, tm, once, base))
    elif not _can_share(space, cfg):  # nothing to split: all of it is per edge
        entry.update(shared={"median": 0.0, "min": 0.0, "sources": s, "group": NO_SHARED_WORK},
                     per_edge={"median": entry["median"], "min": entry["min"]})
    return entry


def _can_share(space, cfg: OpConfig) -> bool:
    """Whether ``cfg``'s edges could share work: the op does some, and some node has two of them leaving it."""
    return (shared_part(cfg.primitive, cfg.stride) is not None
            and len(context_edges(space, cfg, True)) < len(context_edges(space, cfg)))


def _shared_split(cfg: OpConfig, s: int, n: int, every: Timing, once: Timing, base: Timing) -> Dict:
    """Split an op's cost in context over ``n`` edges leaving ``s`` nodes into a part paid once per source node
    (``shared``: what a graph runtime computes once for all the node's edges that need it, see
    :func:`~dartscc_fast.nn.primitives.shared_part`) and a part paid per edge (``per_edge``), from the network
    with the op on every edge (``every``: s x shared + n x per_edge) and on one edge per node (``once``:
    s x (shared + per_edge)), where ``s < n`` (:func:`_can_share`). Both stay >= 0, keeping their sum over the
    ``n`` edges."""
    shared, per_edge = {}, {}
    for stat in ("median", "min"):
        a, b = every.value(stat) - base.value(stat), once.value(stat) - base.value(stat)
        e = (a - b) / (n - s)
        sh = b / s - e
        if sh < 0 or e < 0:  # noise past a bound: keep the total, put it all on the side that is not negative
            e, sh = (max(0.0, a) / n, 0.0) if sh < 0 else (0.0, max(0.0, a) / s)
        shared[stat], per_edge[stat] = sh, e
    return {"shared": dict(shared, sources=s, group=shared_part(cfg.primitive, cfg.stride)),
            "per_edge": per_edge}


def _table_meta(d: torch.device, tok: str, n_threads: int, rt, batch: int, dtype: str, fmt: str, spaces) -> Dict:
    return {
        "device": tok, "device_name": device_name(d), "torch": str(torch.__version__),
        "dartscc_fast": BUILD_INFO["version"], "python": platform.python_version(),
        "threads": n_threads if d.type == "cpu" else None,
        "interop_threads": torch.get_num_interop_threads() if d.type == "cpu" and rt.name == "torch" else None,
        "cuda": torch.version.cuda if d.type == "cuda" else None, "date": utc_now(),
        "batch": batch, "dtype": dtype, "memory_format": fmt,
        "spaces": [s.name for s in spaces], "host": _host(), **rt.meta(),
    }


def calibrate(table: LatencyTable, space, networks: int = 20, seed: int = 1234, rounds: int = 3, runs: int = 3,
              threads: Optional[int] = None, clock: str = "wall") -> Dict:
    """Fit the table's whole-network calibration and store it in ``table.meta['calibration']``.

    ``networks`` random architectures of ``space`` (seeded; the checks of bench/check_latency_prediction.py
    draw others) are measured whole on the table's runtime, interleaved; the offset is the median of
    (measured - base - sum of the ops' entries): what the runtime does around the ops, per network, with
    the networks' runs read by the table's statistic (their median, or their fastest), and for a paced
    table scaled to its pace (``meta['pace']``) by probes of the anchor beside them. The
    scale stays 1: fitted too, on 20 networks timed with 5-10 % noise, it ranged from 0.58 to 1.60 and
    helped in 4 of 9 fits, hurt in 3 (docs/latency.md). Returns the calibration dict.
    """
    if networks < 3:
        raise ValueError(f"calibration needs at least 3 networks, got {networks}")
    if table.device not in ("cpu", "cuda"):
        raise ValueError(f"cannot calibrate the simulated device {table.device!r}: it cannot time networks")
    gen = torch.Generator().manual_seed(seed)
    gs = [random_genotype(space, gen) for _ in range(networks)]
    ref = table_ref_ms(table.meta)
    probes: Optional[List[float]] = [] if ref else None
    tms = time_genotypes(space, gs, batch=table.batch or 64, dtype=table.dtype, device=table.device,
                         threads=threads or table.meta.get("threads"), memory_format=table.memory_format,
                         rounds=rounds, runs=runs, clock=clock, runtime=table.runtime, pace=probes)
    # a paced table predicts at its own pace: bring the networks to it
    meas = np.array([t.value(table.statistic) for t in tms]) * (ref / np.median(probes) if ref else 1.0)
    table.meta.pop("calibration", None)
    ops = np.array([table.predict(space, g, include_base=False) for g in gs])
    rest = meas - np.array([table.base(space, g) for g in gs])
    offset = float(np.median(rest - ops))
    fit = ops + offset - rest
    table.meta["calibration"] = {"scale": 1.0, "offset_ms": offset, "networks": networks, "seed": seed,
                                 "space": space.name, "statistic": table.statistic, "paced": bool(ref),
                                 "fit": "median of (measured - base - sum of the ops)",
                                 "mape_on_fit": float(np.mean(np.abs(fit) / meas) * 100)}
    return table.meta["calibration"]


def measurement_conditions(device: torch.device, threads: int, clock: str) -> Dict:
    """What the machine was doing when a table was measured: the load average (and a warning when other
    work wants the cores a wall-clock run needs), the busy CPUs now, and the CPU frequency governor
    where Linux exposes it."""
    load = _warn_if_busy(device, threads, clock)
    busy, how = busy_cores(0.25)
    return {"load_average": load, "busy_cpus": round(busy, 2), "busy_cpus_how": how,
            "governor": _governor()}


def _governor() -> Optional[str]:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            return f.read().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class _OncePerSource:
    """A profile job: ``op``'s context network with the op on one edge per source node
    (``build_context_network(once_per_source=True)``), which against the full one splits the op's cost."""
    op: OpConfig

    def key(self) -> str:
        return self.op.key() + ":once-per-source"


def _job_name(cfg) -> str:
    if isinstance(cfg, _OncePerSource):
        return cfg.op.primitive + " once per source"
    return cfg.primitive if isinstance(cfg, OpConfig) else "base " + cfg.inputs


def _profile_jobs(spaces, batch: int, dtype: str, tok: str, include_base: bool,
                  once_per_source: bool = False) -> List[Tuple[object, object]]:
    """``(config, space)`` for every distinct op configuration of the spaces, and each one's network bases;
    with ``once_per_source``, each op configuration whose edges could share work (:func:`_can_share`) is
    followed by its once-per-source job (:class:`_OncePerSource`)."""
    jobs, seen = [], set()
    for space in spaces:
        cfgs = list(space_configs(space, batch, dtype, tok))
        if once_per_source:
            cfgs = [j for c in cfgs for j in ([c, _OncePerSource(c)] if _can_share(space, c) else [c])]
        if include_base:
            cfgs += [BaseConfig.of(space, batch, dtype, tok, inputs) for inputs in BASE_INPUTS]
        for cfg in cfgs:
            if cfg.key() not in seen:
                seen.add(cfg.key())
                jobs.append((cfg, space))
    return jobs


def _job_callable(cfg, space, batch: int, dtype: str, d: torch.device, fmt: str, timing_kw: Dict, rt,
                  in_context: bool = False):
    """What to time for one configuration (an op on its input, its context network, or a network base) on
    runtime ``rt``, and its timing options."""
    kw = dict(timing_kw)
    if isinstance(cfg, _OncePerSource) or (in_context and isinstance(cfg, OpConfig)):
        once = isinstance(cfg, _OncePerSource)
        net, _ = build_context_network(space, cfg.op if once else cfg, dtype, d, fmt, once_per_source=once)
        kw["max_seconds"] *= 3
        return rt.prepare(net, network_input(space, batch, dtype, d, fmt)), kw
    if isinstance(cfg, BaseConfig):
        net = build_base_network(space, cfg.inputs, dtype, d, fmt)
        x = network_input(space, batch, dtype, d, fmt)
        # a whole network runs ~10x longer than an op: give it the runs an op gets
        kw["max_seconds"] *= 3
        return rt.prepare(net, x), kw
    op = build_op(cfg, fmt).to(d)
    x = in_format(torch.randn(cfg.batch, cfg.cin, cfg.h, cfg.w, dtype=torch_dtype(dtype), device=d), fmt)
    return rt.prepare(op, x), kw


def _host() -> Dict:
    return {"system": platform.system(), "machine": platform.machine(), "cpus": os.cpu_count()}


def simulate_table(spaces, preset: Union[str, DevicePreset], batch: int = 64, dtype="float32",
                   include_base: bool = True) -> LatencyTable:
    """A latency table for a simulated device: every configuration of the given space(s), estimated."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    spaces = spaces if isinstance(spaces, (list, tuple)) else [spaces]
    dtype = dtype_name(dtype)
    device = "sim:" + preset.name
    t = LatencyTable(meta={
        "device": "sim-" + preset.name, "device_name": preset.description, "torch": None,
        "dartscc_fast": BUILD_INFO["version"], "python": platform.python_version(), "threads": None, "date": utc_now(),
        "method": "roofline model: sum over the primitive's kernels of max(FLOPs / peak, bytes / bandwidth) "
                  "+ per-kernel overhead (dartscc_fast.latency.roofline)",
        "batch": batch, "dtype": dtype, "spaces": [s.name for s in spaces],
        "preset": asdict(preset)})
    for space in spaces:
        for cfg in space_configs(space, batch, dtype, device):
            ks = kernels(cfg)
            t.add(cfg, kernel_time_ms(ks, preset, dtype), 0.0, 0, flops=float(sum(f for _, f, _ in ks)),
                  bytes=float(sum(b for _, _, b in ks)))
        if include_base:
            for inputs in BASE_INPUTS:
                base = BaseConfig.of(space, batch, dtype, device, inputs)
                t.add(base, estimate(base, preset, space), 0.0, 0)
    return t
