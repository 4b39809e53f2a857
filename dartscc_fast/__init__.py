"""dartscc_fast: hardware-aware differentiable architecture search with fused kernels.

Import order matters: ``_extension`` loads the compiled ops, ``ops`` gives them
fake kernels and autograd, and the modules above use ``ops``.
"""
from dartscc_fast import ops
from dartscc_fast._extension import BUILD_INFO
from dartscc_fast.latency import LatencyTable, OpConfig, latency_reg, normalise, profile_space
from dartscc_fast.nn.mixed_op import MixedOp, fuse_preprocessing, replace_mixed_ops
from dartscc_fast.nn.primitives import DARTS_PRIMITIVES, FMNIST_PRIMITIVES, OP_TYPES, op_type
from dartscc_fast.ops import (
    gumbel_softmax,
    hard_mixed_sum,
    mixed_op_free,
    mixed_sum,
    relu_dw_pw_conv,
    selftest,  # a callable module: dartscc_fast.selftest(device="cpu", quick=False)
)

__version__ = BUILD_INFO["version"]
__all__ = ["BUILD_INFO", "ops", "gumbel_softmax", "hard_mixed_sum", "mixed_op_free", "mixed_sum", "relu_dw_pw_conv",
           "MixedOp", "fuse_preprocessing", "replace_mixed_ops", "DARTS_PRIMITIVES", "FMNIST_PRIMITIVES", "OP_TYPES",
           "op_type", "LatencyTable", "OpConfig", "latency_reg", "normalise", "profile_space", "selftest"]

# The pruning variant is its own experiment: it loads on first use, not with the package.
_LAZY_PRUNE = ("prune", "PrunableNet", "find_edges", "run_prune", "theorem1_lambda")


def __getattr__(name: str):
    if name in _LAZY_PRUNE:
        import dartscc_fast.prune  # allowed in tests/test_layering.py: the lazy load above
        return dartscc_fast.prune if name == "prune" else getattr(dartscc_fast.prune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_PRUNE))
