"""What the compiled kernels and the Python side agree on, in a module that imports no other of the package.

The slot codes and the candidate bound are those of ``csrc/common/primitives.h``
(``tests/ops/test_kernel_spec.py`` parses the header and checks them); the shape and
dtype rules are the ones the fake kernels (:mod:`dartscc_fast.ops`) and the CUDA
gate's torch paths (:mod:`dartscc_fast.ops.cuda_gate`) both follow.
"""
from __future__ import annotations

import torch

#: Slot codes of :func:`dartscc_fast.ops.mixed_op_free`: ``enum PrimCode`` of csrc/common/primitives.h.
PRIM_CODES = {"param": 0, "none": 1, "identity": 2, "max_pool": 3, "avg_pool": 4}
#: The most candidates one mixed op may have: ``kMaxOps`` of csrc/common/primitives.h.
MAX_OPS = 16


def hard_out_shape(outputs, index) -> tuple:
    """The output shape of ``hard_mixed_sum``: one row per sample, the rest of any drawn output's shape."""
    rest = next((o.shape[1:] for o in outputs if o.dim() >= 1), ())
    return (index.shape[0],) + tuple(rest)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the pooled BatchNorm statistics: float32 for the half types (the kernels accumulate in it)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
