import pytest
import torch

CUDA_REASON = "CUDA is not available on this machine (CPU-only torch or no GPU): CUDA kernels untested here"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON))]


def tol(dtype):
    """Tolerances tied to the dtype's own precision (as torch.testing does)."""
    return {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4),
            torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}[dtype]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
