"""The runtimes a latency table is measured on, one small module each.

A runtime turns an eval-mode module and its input into a zero-argument callable that runs one
forward the way the runtime deploys it (:meth:`Runtime.prepare`), and says what a table made on it
records (:meth:`Runtime.meta`): its name, version, provider, threads and optimisation level.

- :mod:`.eager`: eager PyTorch under ``torch.inference_mode`` (the default);
- :mod:`.onnx_runtime`: the module exported to ONNX and run in an ONNX Runtime session with the
  graph optimisations a deployment uses (``pip install dartscc_fast[onnx]``);
- :mod:`.openvino_runtime`: the same ONNX graph compiled by OpenVINO for its CPU plugin
  (``pip install dartscc_fast[openvino]``).

Adding a runtime (OpenVINO, TensorRT, ...) is one more module with a :class:`Runtime` subclass, and
its name in :data:`RUNTIMES`.
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional, Union

import torch

from dartscc_fast.latency.runtimes.base import Runtime, RuntimeUnavailable

#: name -> module that defines it (imported on first use: optional runtimes need optional packages)
RUNTIMES: Dict[str, str] = {
    "torch": "dartscc_fast.latency.runtimes.eager",
    "onnxruntime": "dartscc_fast.latency.runtimes.onnx_runtime",
    "openvino": "dartscc_fast.latency.runtimes.openvino_runtime",
}


def get_runtime(name: str = "torch", device: Union[str, torch.device] = "cpu",
                threads: Optional[int] = None) -> Runtime:
    """The runtime called ``name`` on ``device`` with ``threads`` CPU threads (None: the runtime's default).

    Raises ValueError for an unknown name, :class:`RuntimeUnavailable` (a ValueError) when the runtime's
    package is not installed or cannot run on ``device``."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return importlib.import_module(RUNTIMES[name]).RUNTIME(torch.device(device), threads)


def table_runtime(meta: Dict) -> str:
    """The runtime a table's meta names ('torch' for tables from before the field existed)."""
    return meta.get("runtime") or "torch"


__all__ = ["RUNTIMES", "Runtime", "RuntimeUnavailable", "get_runtime", "table_runtime"]
