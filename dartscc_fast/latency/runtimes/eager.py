"""Eager PyTorch: the module called as it is, under ``torch.inference_mode``, with ``torch.set_num_threads``."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator

import torch
from torch import nn

from dartscc_fast.latency.runtimes.base import Runtime, num_threads


class EagerTorch(Runtime):
    name = "torch"

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        return lambda: module(x)

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        with num_threads(self.threads if self.device.type == "cpu" else None) as n:
            yield n

    def meta(self) -> Dict:
        return {"runtime": self.name, "runtime_version": str(torch.__version__),
                "provider": "cuda" if self.device.type == "cuda" else "cpu (ATen, oneDNN)",
                "optimisation": "eager, inference_mode"}


RUNTIME = EagerTorch
