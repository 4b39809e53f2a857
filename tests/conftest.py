import importlib.util
import os

import pytest
import torch

# The tests check the CUDA kernels themselves, not the torch path the CUDA gate would pick for a kernel that
# failed its selftest (tests/ops/test_cuda_gate.py sets the variable itself).
os.environ.setdefault("DARTSCC_CUDA_KERNELS", "1")

CUDA_REASON = "CUDA is not available on this machine (CPU-only torch or no GPU): CUDA kernels untested here"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON))]

# the graph runtimes latency tables are measured on (optional extras)
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAVE_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="needs onnx and onnxruntime (pip install .[onnx])")
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="needs onnx and openvino (pip install .[openvino])")
#: the quickest profile a latency test can read: two images, one thread, a few runs
QUICK_PROFILE = dict(batch=2, threads=1, progress=False, max_seconds=0.02, min_runs=3, warmup=1)


def tol(dtype):
    """Tolerances tied to the dtype's own precision (as torch.testing does)."""
    return {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4),
            torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}[dtype]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_networks_agree(ref, net, x, num_edges, k):
    """Random softmax weights for both cell types (float64, drawn here); the search networks ref and net
    must agree in output and in the gradients of the weights and of every parameter. Returns the weights."""
    wn = torch.softmax(torch.randn(num_edges, k, dtype=torch.float64), -1).requires_grad_()
    wr = torch.softmax(torch.randn(num_edges, k, dtype=torch.float64), -1).requires_grad_()
    a, b = ref(x, wn, wr), net(x, wn, wr)
    torch.testing.assert_close(b, a)
    ga = torch.autograd.grad(a.square().sum(), [wn, wr] + list(ref.parameters()))
    gb = torch.autograd.grad(b.square().sum(), [wn, wr] + list(net.parameters()))
    for p, q in zip(gb, ga):
        torch.testing.assert_close(p, q)
    return wn, wr
