"""Keep freed memory in the process: glibc malloc tuning for CPU training.

glibc serves blocks above a (dynamic) threshold with ``mmap`` and gives the top
of the heap back to the OS once more than twice that threshold is free. A
training step frees and reallocates the same few-megabyte activations every
step, so under the defaults every step page-faults them back in (on the MixedOp
benchmark, a third of the step's time, for the reference ops as for ours:
docs/design.md, "Tuning switches"). PyTorch's CPU
tuning guide recommends jemalloc or tcmalloc for the same reason; this does the
equivalent with the allocator already loaded.

``keep_freed_memory()`` raises both thresholds, so freed blocks stay in the heap
for the next step. The cost: the process keeps its peak heap until it exits.
The command line applies it to the commands that train (set
``DARTSCC_MALLOC_TUNING=0`` to leave malloc alone); benchmarks apply it to
every implementation alike (``DARTSCC_BENCH_MALLOC=0`` to compare without).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "tuning_enabled"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def tuning_enabled(env: str = "DARTSCC_MALLOC_TUNING") -> bool:
    """False when the environment variable ``env`` is set to 0/false/no/off."""
    return os.environ.get(env, "1").strip().lower() not in ("0", "false", "no", "off")


def keep_freed_memory(threshold_mb: int = 1024) -> bool:
    """Set glibc's trim and mmap thresholds to ``threshold_mb`` MiB.

    Returns True when applied; False where there is no glibc (macOS, Windows,
    musl) or glibc refused the values. Safe to call more than once.
    """
    global _applied
    if threshold_mb <= 0:
        raise ValueError(f"threshold_mb must be > 0, got {threshold_mb}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    value = int(threshold_mb) << 20
    ok = bool(mallopt(_M_TRIM_THRESHOLD, value)) and bool(mallopt(_M_MMAP_THRESHOLD, value))
    _applied = _applied or ok
    return ok
