// latency_reg: the latency regulariser of the method (section 1),
//   Lat_S = sum_e sum_m S[type(m)] * L[e, m] * w[e, m],
// with w the architecture weights ([E, k], or [N, E, k] per sample), L the
// latency table's [E, k] (a constant of the search), S the complexity vector
// ([T], or [N, T] per sample) and type_index the op type of each candidate
// (-1: 'none', no type and no cost). The output is a scalar, or [N] when w or
// S is per sample (then the caller takes the mean with its per-sample loss).
// Backward (dLat/dw = S_type * L, one small reduction for S and L):
//   grad_w[n, e, m] = g[n] * S[n, type(m)] * L[e, m]
//   grad_S[n, t]    = g[n] * sum_{e, m: type(m) = t} L[e, m] * w[n, e, m]
//   grad_L[e, m]    = sum_n g[n] * S[n, type(m)] * w[n, e, m]
// summed over n for an operand that is shared by every sample.
//
// type_index is an int[] (not a tensor) so its values are checked on the host
// without a device sync and reach the CUDA kernels by value.
#include "latency_reg.h"

#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("latency_reg(Tensor w, Tensor L, Tensor S, int[] type_index) -> Tensor");
  m.def("latency_reg_backward(Tensor grad, Tensor w, Tensor L, Tensor S, int[] type_index) "
        "-> (Tensor, Tensor, Tensor)");
}

namespace dartscc {

LatRegShape check_latency_reg(const char* op, const at::Tensor& w, const at::Tensor& L, const at::Tensor& S,
                              at::IntArrayRef type_index) {
  LatRegShape s;
  check_float_dtype(op, "w", w);
  TORCH_CHECK(w.dim() == 2 || w.dim() == 3, op, ": w must have shape [E, k] or [N, E, k], got ", w.sizes());
  s.e = w.size(-2);
  s.k = w.size(-1);
  TORCH_CHECK(s.k >= 1 && s.k <= kMaxOps, op, ": w must have between 1 and ", kMaxOps,
              " candidates in its last dimension, got shape ", w.sizes());
  TORCH_CHECK(L.dim() == 2 && L.size(0) == s.e && L.size(1) == s.k, op, ": L must have shape [E, k] = [", s.e,
              ", ", s.k, "] (w's last two dimensions), got ", L.sizes());
  TORCH_CHECK(L.scalar_type() == w.scalar_type(), op, ": L must have w's dtype ", w.scalar_type(), ", got ",
              L.scalar_type());
  check_same_device(op, "L", L, w);
  TORCH_CHECK(S.dim() == 1 || S.dim() == 2, op, ": S must have shape [T] or [N, T], got ", S.sizes());
  s.t = S.size(-1);
  TORCH_CHECK(s.t >= 1 && s.t <= kMaxTypes, op, ": S must have between 1 and ", kMaxTypes,
              " op types in its last dimension, got shape ", S.sizes());
  TORCH_CHECK(S.scalar_type() == w.scalar_type(), op, ": S must have w's dtype ", w.scalar_type(), ", got ",
              S.scalar_type());
  check_same_device(op, "S", S, w);
  TORCH_CHECK(static_cast<int64_t>(type_index.size()) == s.k, op, ": type_index must list the type of each of the ",
              s.k, " candidates, got ", type_index.size(), " values");
  for (int64_t m = 0; m < s.k; ++m) {
    TORCH_CHECK(type_index[m] >= -1 && type_index[m] < s.t, op, ": type_index[", m, "] = ", type_index[m],
                " is not an op type: expected -1 (none, no cost) or an index into S's ", s.t, " types");
    s.types[m] = static_cast<int>(type_index[m]);
  }
  s.w_batched = w.dim() == 3;
  s.s_batched = S.dim() == 2;
  s.out_batched = s.w_batched || s.s_batched;
  if (s.w_batched && s.s_batched) {
    TORCH_CHECK(w.size(0) == S.size(0), op, ": per-sample w [N, E, k] and S [N, T] must agree on N, got w ",
                w.sizes(), " and S ", S.sizes());
  }
  s.rows = s.w_batched ? w.size(0) : (s.s_batched ? S.size(0) : 1);
  return s;
}

LatRegShape check_latency_reg_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& L,
                                       const at::Tensor& S, at::IntArrayRef type_index) {
  const char* op = "latency_reg_backward";
  LatRegShape s = check_latency_reg(op, w, L, S, type_index);
  if (s.out_batched) {
    TORCH_CHECK(grad.dim() == 1 && grad.size(0) == s.rows, op, ": grad must have the output's shape [", s.rows,
                "], got ", grad.sizes());
  } else {
    TORCH_CHECK(grad.dim() == 0, op, ": grad must be a scalar like the output, got shape ", grad.sizes());
  }
  TORCH_CHECK(grad.scalar_type() == w.scalar_type(), op, ": grad must have w's dtype ", w.scalar_type(), ", got ",
              grad.scalar_type());
  check_same_device(op, "grad", grad, w);
  return s;
}

}  // namespace dartscc
