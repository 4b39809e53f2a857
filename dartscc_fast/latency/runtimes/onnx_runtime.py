"""ONNX Runtime: the module exported to ONNX (the TorchScript-based exporter, opset 17) and run in an
``InferenceSession`` with every graph optimisation (``ORT_ENABLE_ALL``: constant folding, Conv+BN
folding, Conv+activation fusion, common-subexpression elimination, layout transforms), one session per
module, sequential execution, ``intra_op_num_threads`` threads. The CPU execution provider on the CPU;
the CUDA one on a GPU where the installed onnxruntime has it (onnxruntime-gpu).

A call is ``session.run`` on a NumPy input (CPU) or an I/O binding of device buffers (CUDA), so the
per-call cost of the Python binding is part of every timing, as in a deployment that calls it.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable, Dict

import torch
from torch import nn

from dartscc_fast.latency.runtimes.base import Runtime, RuntimeUnavailable

OPSET = 17


def _ort():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailable("the onnxruntime runtime needs onnx and onnxruntime: "
                                 "pip install 'dartscc_fast[onnx]' (or pip install onnx onnxruntime)") from None
    return onnxruntime


def export_onnx(module: nn.Module, x: torch.Tensor) -> bytes:
    """The module as an ONNX model (bytes), traced on ``x`` (contiguous, on the CPU)."""
    m = module.to(memory_format=torch.contiguous_format).cpu().eval()
    x = x.detach().cpu().contiguous()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant shapes
        torch.onnx.export(m, (x,), buf, input_names=["x"], output_names=["y"], opset_version=OPSET, dynamo=False)
    return buf.getvalue()


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    all_cpus_by_default = True
    uses_memory_format = False  # ONNX graphs are NCHW; ORT picks its own internal layouts

    def __init__(self, device: torch.device, threads):
        super().__init__(device, threads)
        self.ort = _ort()
        want = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
        if want not in self.ort.get_available_providers():
            raise RuntimeUnavailable(f"onnxruntime {self.ort.__version__} has no {want} here (it has "
                                     f"{', '.join(self.ort.get_available_providers())}); for CUDA install "
                                     "onnxruntime-gpu")
        self.provider = want
        self.timer_device = torch.device("cpu")  # a session run returns when its work is done: host clock

    def options(self):
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.cpu_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def session(self, model: bytes):
        return self.ort.InferenceSession(model, sess_options=self.options(), providers=[self.provider])

    def prepare(self, module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        sess = self.session(export_onnx(module, x))
        x_np = x.detach().cpu().contiguous().numpy()
        if self.provider == "CPUExecutionProvider":
            feed = {"x": x_np}
            return lambda: sess.run(None, feed)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("x", self.ort.OrtValue.ortvalue_from_numpy(x_np, "cuda", self.device.index or 0))
        binding.bind_output("y", "cuda", self.device.index or 0)
        return lambda: sess.run_with_iobinding(binding)

    def thread_clock_ok(self, threads: int) -> bool:
        # with one intra-op thread ORT computes on the calling thread
        return self.provider == "CPUExecutionProvider" and threads == 1

    def meta(self) -> Dict:
        return {"runtime": self.name, "runtime_version": self.ort.__version__, "provider": self.provider,
                "optimisation": "ORT_ENABLE_ALL, sequential, inter_op_num_threads 1",
                "onnx_opset": OPSET}


RUNTIME = OnnxRuntime
