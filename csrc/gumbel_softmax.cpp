// gumbel_softmax: softmax((logits + G) / tau) over the last dimension, G Gumbel
// noise from Philox keyed by `seed` (a CPU int64 scalar tensor, so the op is a
// pure function that torch.compile can trace). With hard=True the first output
// is the one-hot argmax; the second is always the soft sample, which the
// backward needs: dL/dlogits = soft * (g - sum(g * soft)) / tau.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("gumbel_softmax(Tensor logits, Tensor seed, float tau, bool hard) -> (Tensor, Tensor)");
  m.def("gumbel_softmax_backward(Tensor grad, Tensor soft, float tau) -> Tensor");
}
