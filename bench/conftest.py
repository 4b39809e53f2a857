"""Shared benchmark machinery: one pytest-benchmark group per op and shape, the
reference, torch.compile(reference) and ours in each; ratios and achieved
bandwidth printed at the end against a copy bandwidth measured in the same run."""
from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict

import pytest
import torch

_RESULTS = defaultdict(dict)   # group -> impl -> median seconds
_BYTES = {}                    # group -> bytes moved by one call (for GB/s)
_BANDWIDTH = {}
_SETTINGS = {}
_INTERLEAVED = {}              # group -> impl -> per-round ratios impl / ours


def pytest_configure(config):
    # On a shared machine, more threads than free cores turn OpenMP barriers into
    # scheduler waits that swamp every timing: DARTSCC_BENCH_THREADS pins the count.
    if os.getenv("DARTSCC_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["DARTSCC_BENCH_THREADS"]))
    # Freed activations stay in the heap instead of being page-faulted back every
    # step, for every implementation alike (dartscc_fast/cli/allocator.py);
    # DARTSCC_BENCH_MALLOC=0 measures under glibc's defaults.
    from dartscc_fast.cli.allocator import keep_freed_memory, tuning_enabled
    _SETTINGS["malloc"] = "kept freed memory" if tuning_enabled("DARTSCC_BENCH_MALLOC") and keep_freed_memory() \
        else "glibc defaults"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device="cpu", mbytes=256) -> float:
    """Achieved copy bandwidth (read + write) in GB/s, best of 5."""
    if device in _BANDWIDTH:
        return _BANDWIDTH[device]
    n = mbytes * 2 ** 20 // 4
    a = torch.ones(n, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t)
    _BANDWIDTH[device] = 2 * a.numel() * 4 / best / 1e9
    return _BANDWIDTH[device]


@pytest.fixture
def record(benchmark):
    """record(group, impl, fn, bytes_moved=None, device='cpu'): time fn in pytest-benchmark, keep the median."""

    def run(group, impl, fn, bytes_moved=None, device="cpu", rounds=None):
        benchmark.group = group
        benchmark.name = impl

        def call():
            fn()
            sync(device)

        try:
            for _ in range(3):  # warm-up, and torch.compile's compilation
                call()
        except Exception as e:  # noqa: BLE001  (a reference torch.compile cannot build is reported, not timed)
            if impl != "compiled":
                raise
            pytest.skip(f"torch.compile of the reference failed here: {type(e).__name__}: {str(e)[:200]}")
        if rounds:
            benchmark.pedantic(call, rounds=rounds, iterations=1)
        else:
            benchmark(call)
        _RESULTS[group][impl] = benchmark.stats.stats.median
        if bytes_moved:
            _BYTES[group] = (bytes_moved, device)

    return run


@pytest.fixture
def interleave():
    """interleave(group, {impl: fn}, rounds): every round runs each implementation in turn, in an order
    that rotates from round to round, and keeps each one's time over ours for that round.

    On a shared machine the load drifts within a run, so implementations timed one after the other
    (pytest-benchmark's groups) see different machines; per-round ratios of interleaved calls do not.
    Each turn calls the implementation once untimed and then times one call, so it runs with its own
    data in the caches, as a training loop does, not after another implementation flushed them.
    """

    def run(group, fns, rounds=6, device="cpu"):
        names = list(fns)
        if "ours" not in names:
            raise ValueError("interleave: one implementation must be named 'ours'")
        for name in names:  # warm-up
            fns[name]()
        sync(device)
        times = {name: [] for name in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fns[name]()
                sync(device)
                t = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - t)
        _INTERLEAVED[group] = {name: [a / b for a, b in zip(times[name], times["ours"])]
                               for name in names if name != "ours"}
        _INTERLEAVED[group]["ours ms"] = [t * 1e3 for t in times["ours"]]
        return _INTERLEAVED[group]

    return run


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if _INTERLEAVED:
        tr.section("dartscc_fast: interleaved, speed-up of ours per round (median, min-max over rounds)")
        for group, res in sorted(_INTERLEAVED.items()):
            parts = [f"{impl} {statistics.median(r):5.2f}x ({min(r):.2f}-{max(r):.2f})"
                     for impl, r in sorted(res.items()) if impl != "ours ms"]
            tr.write_line(f"{group:58s} ours {statistics.median(res['ours ms']):8.3f} ms | " + " | ".join(parts)
                          + f" | {len(res['ours ms'])} rounds")
    if not _RESULTS:
        return
    tr.section("dartscc_fast: speed-up of ours over each implementation (median times, one run)")
    tr.write_line(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads "
                  f"(set DARTSCC_BENCH_THREADS to change), CUDA: {torch.cuda.is_available()}, "
                  f"malloc: {_SETTINGS.get('malloc', 'glibc defaults')} (DARTSCC_BENCH_MALLOC=0/1)")
    for group, impls in sorted(_RESULTS.items()):
        ours = impls.get("ours")
        if ours is None:
            continue
        parts = [f"{impl} {impls[impl] / ours:5.2f}x" for impl in sorted(impls) if impl != "ours"]
        line = f"{group:58s} ours {ours * 1e3:8.3f} ms | " + " | ".join(parts)
        if group in _BYTES:
            nbytes, device = _BYTES[group]
            gbs = nbytes / ours / 1e9
            bw = copy_bandwidth(device)
            line += f" | {gbs:6.1f} GB/s = {100 * gbs / bw:5.1f}% of copy {bw:.1f} GB/s"
        tr.write_line(line)
