// mixed_op_free: a DARTS mixed op whose parameter-free candidates (zero,
// identity, 3x3 max/avg pooling + BatchNorm2d(affine=False)) are computed from
// the edge input x inside the weighted sum, so their outputs are never stored.
// The parametric candidates' outputs come in as `param_outputs`, one per
// `prims` slot coded kParam (see common/primitives.h).
//
// Returns (y, stats): stats [P, 2, C] holds the (mean, biased var) each of the P
// pool slots was normalised with: batch statistics, or `bn_stats` when given
// (BatchNorm in eval mode). The backward folds the BatchNorm backward in, so no
// pool output or normalised tensor is ever materialised.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("mixed_op_free(Tensor x, Tensor[] param_outputs, Tensor weights, int[] prims, int stride, "
        "float eps, Tensor? bn_stats) -> (Tensor, Tensor)");
  m.def("mixed_op_free_backward(Tensor grad, Tensor x, Tensor[] param_outputs, Tensor weights, int[] prims, "
        "int stride, float eps, Tensor stats, bool stats_fixed) -> (Tensor, Tensor[], Tensor)");
}
