// mixed_sum: y = sum_m w_m * o_m, weights per edge [k] or per sample [N, k].
// Backward: dL/do_m = w_m * g, dL/dw_m = <g, o_m> (per sample for [N, k]).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("mixed_sum(Tensor[] outputs, Tensor weights) -> Tensor");
  m.def("mixed_sum_backward(Tensor grad, Tensor[] outputs, Tensor weights) -> (Tensor[], Tensor)");
}
