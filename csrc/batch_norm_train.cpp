// batch_norm_train: the affine-free BatchNorm of DARTS's search cells in
// training mode, y = (x - mean) / sqrt(var + eps) with the batch mean and biased
// variance of each channel. x [N, C, *]; returns (y, mean [C], var [C]), the
// statistics for the caller's running-average update (as nn.BatchNorm2d does).
//
// The forward walks the planes in memory order (each thread a run of whole
// (n, c) planes), so the statistics pass streams x once instead of visiting a
// channel's N planes N*C*H*W apart; per-plane (mean, M2) partials merge per
// channel in sample order (Chan et al.), so results do not depend on the thread
// count. The backward is its own op; on the CPU it is ATen's batch-norm
// backward with the same saved statistics.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("batch_norm_train(Tensor x, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_train_backward(Tensor grad, Tensor x, Tensor mean, Tensor var, float eps) -> Tensor");
}
