// hard_mixed_sum: the hard (one-hot) Gumbel path, where each op ran only on the
// samples that drew it. outputs[m] is [count_m, ...] (those samples, in order),
// index [N] says which op each sample drew, weights [k] or [N, k]:
//   y[n] = w[n, index[n]] * outputs[index[n]][pos(n)] + sum_{m != index[n]} w[n, m]
// The second term is zero in value but gives the ops not drawn the
// straight-through gradient sum(g[n]) (GDAS).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("hard_mixed_sum(Tensor[] outputs, Tensor weights, Tensor index) -> Tensor");
  m.def("hard_mixed_sum_backward(Tensor grad, Tensor[] outputs, Tensor weights, Tensor index) -> (Tensor[], Tensor)");
}
