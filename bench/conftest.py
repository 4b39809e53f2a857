"""Shared benchmark machinery: one pytest-benchmark group per op and shape, the
reference, torch.compile(reference) and ours in each; ratios and achieved
bandwidth printed at the end against a copy bandwidth measured in the same run."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest
import torch

_RESULTS = defaultdict(dict)   # group -> impl -> median seconds
_BYTES = {}                    # group -> bytes moved by one call (for GB/s)
_BANDWIDTH = {}
_SETTINGS = {}


def pytest_configure(config):
    # On a shared machine, more threads than free cores turn OpenMP barriers into
    # scheduler waits that swamp every timing: DARTSCC_BENCH_THREADS pins the count.
    if os.getenv("DARTSCC_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["DARTSCC_BENCH_THREADS"]))
    # Freed activations stay in the heap instead of being page-faulted back every
    # step, for every implementation alike (dartscc_fast/allocator.py);
    # DARTSCC_BENCH_MALLOC=0 measures under glibc's defaults.
    from dartscc_fast.allocator import keep_freed_memory, tuning_enabled
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


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
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
