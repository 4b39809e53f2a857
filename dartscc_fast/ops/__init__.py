"""The compiled ops: typed wrappers with their fake kernels and autograd, one module per op.

Each op's schema lives in ``csrc/<op>.cpp``, its CPU kernel in ``csrc/cpu/<op>_cpu.cpp``, its CUDA kernel
in ``csrc/cuda/<op>_kernel.cu``, its wrapper in ``dartscc_fast/ops/<op>.py``, its pure-PyTorch reference in
:mod:`dartscc_fast.reference`, its tests in ``tests/ops/test_<op>.py`` and its benchmark in
``bench/bench_<op>.py``. The shared autograd machinery is :mod:`dartscc_fast.ops._autograd`.
"""
from dartscc_fast import _extension  # noqa: F401  (registers the ops)
from dartscc_fast.ops.batch_norm_train import batch_norm_train
from dartscc_fast.ops.gumbel_softmax import gumbel_softmax
from dartscc_fast.ops.hard_mixed_sum import hard_groups, hard_mixed_sum
from dartscc_fast.ops.kernel_spec import MAX_OPS, PRIM_CODES
from dartscc_fast.ops.mixed_op_free import mixed_op_free, prim_codes
from dartscc_fast.ops.mixed_sum import is_non_overlapping_and_dense, mixed_sum
from dartscc_fast.ops.node_sum import node_sum
from dartscc_fast.ops.relu_dw_pw_conv import relu_dw_pw_conv

__all__ = ["mixed_sum", "gumbel_softmax", "hard_mixed_sum", "hard_groups", "mixed_op_free", "relu_dw_pw_conv",
           "batch_norm_train", "node_sum",
           "PRIM_CODES", "MAX_OPS", "prim_codes", "is_non_overlapping_and_dense"]


