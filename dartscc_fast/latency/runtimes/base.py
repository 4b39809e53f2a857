"""The interface every runtime module implements."""
from __future__ import annotations

import abc
import contextlib
import os
from typing import Callable, Dict, Iterator, Optional

import torch
from torch import nn


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[int]:
    """Run with ``torch.set_num_threads(n)`` (None: leave it), restoring it after; yields the count."""
    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


class RuntimeUnavailable(ValueError):
    """The runtime's package is missing, or it cannot run on the device asked for."""


class Runtime(abc.ABC):
    """One way of running a network: what a latency table measures and a deployment runs.

    Subclasses set :attr:`name` and implement :meth:`prepare` and :meth:`meta`.
    """
    name: str = ""
    #: whether the table's memory format applies (eager torch); a compiled graph picks its own layout
    uses_memory_format: bool = True
    #: threads=None means every CPU (the graph runtimes' own default), else one
    all_cpus_by_default: bool = False

    def __init__(self, device: torch.device, threads: Optional[int]):
        self.device = device
        self.threads = threads
        default = (os.cpu_count() or 1) if self.all_cpus_by_default else 1
        self.cpu_threads = int(threads) if threads else default  # what the timed calls compute with
        self.timer_device = device  # where time_callable times a call (CUDA events on a torch GPU)

    @abc.abstractmethod
    def prepare(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        """A callable that runs one forward of the eval-mode ``module`` on ``x`` in this runtime."""

    @abc.abstractmethod
    def meta(self) -> Dict:
        """What a table made on this runtime records: runtime, runtime_version, provider, threads,
        optimisation."""

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        """The context the timed calls run in; yields the CPU thread count the runtime computes with."""
        yield self.cpu_threads

    def thread_clock_ok(self, threads: int) -> bool:
        """Whether the calling thread's CPU time measures a call (the work runs on the calling thread)."""
        return self.device.type == "cpu" and threads == 1
