"""OpenVINO: the module exported to ONNX (as for ONNX Runtime), read by OpenVINO and compiled for its
CPU plugin with the latency hint (``PERFORMANCE_HINT: LATENCY``, one stream, f32 precision) and
``INFERENCE_NUM_THREADS`` threads; a call is one synchronous inference request on a NumPy input
shared without a copy. ``pip install openvino``.
"""
from __future__ import annotations

import io
from typing import Callable, Dict

import torch
from torch import nn

from dartscc_fast.latency.runtimes.base import Runtime, RuntimeUnavailable
from dartscc_fast.latency.runtimes.onnx_runtime import OPSET, export_onnx


def _ov():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import openvino
    except ImportError:
        raise RuntimeUnavailable("the openvino runtime needs onnx and openvino: pip install onnx openvino") from None
    return openvino


class OpenVino(Runtime):
    name = "openvino"
    all_cpus_by_default = True
    uses_memory_format = False  # the plugin picks its own layouts

    def __init__(self, device: torch.device, threads):
        super().__init__(device, threads)
        if device.type != "cpu":
            raise RuntimeUnavailable(f"the openvino runtime here runs on its CPU plugin only, not {device.type}")
        self.ov = _ov()
        self.core = self.ov.Core()
        # f32: the table's dtype (the plugin would pick bf16 on CPUs that have it)
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.cpu_threads,
                       "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        model = self.ov.convert_model(io.BytesIO(export_onnx(module, x)))
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        x_np = x.detach().cpu().contiguous().numpy()
        return lambda: request.infer(x_np, share_inputs=True)

    def thread_clock_ok(self, threads: int) -> bool:
        return False  # the CPU plugin computes on its own thread pool, whatever the count

    def meta(self) -> Dict:
        return {"runtime": self.name, "runtime_version": self.ov.get_version(), "provider": "CPU plugin",
                "optimisation": "PERFORMANCE_HINT LATENCY, NUM_STREAMS 1, f32", "onnx_opset": OPSET}


RUNTIME = OpenVino
