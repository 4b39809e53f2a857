#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../latency_reg.h"

namespace dartscc {
namespace {

// Sums run in double in a fixed order, so the results do not depend on the
// thread count; the problem is small (N * E * k), so this costs nothing.
constexpr int64_t kGrain = 64;

// S[r, type(m)] (0 for 'none') for each output row r: [rows, k].
template <typename scalar_t>
std::vector<double> type_weights(const scalar_t* S, const LatRegShape& s) {
  std::vector<double> st(static_cast<size_t>(s.rows * s.k));
  for (int64_t r = 0; r < s.rows; ++r) {
    const scalar_t* Sr = S + (s.s_batched ? r : 0) * s.t;
    for (int64_t m = 0; m < s.k; ++m)
      st[r * s.k + m] = s.types[m] < 0 ? 0.0 : static_cast<double>(Sr[s.types[m]]);
  }
  return st;
}

// P[nw, m] = sum_e L[e, m] * w[nw, e, m]: each candidate's latency-weighted mass.
template <typename scalar_t>
std::vector<double> column_sums(const scalar_t* w, const scalar_t* L, const LatRegShape& s, int64_t nw) {
  std::vector<double> P(static_cast<size_t>(nw * s.k), 0.0);
  at::parallel_for(0, nw, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* wr = w + r * s.e * s.k;
      double* p = P.data() + r * s.k;
      for (int64_t e = 0; e < s.e; ++e)
        for (int64_t m = 0; m < s.k; ++m)
          p[m] += static_cast<double>(L[e * s.k + m]) * static_cast<double>(wr[e * s.k + m]);
    }
  });
  return P;
}

at::Tensor latency_reg_cpu(const at::Tensor& w_, const at::Tensor& L_, const at::Tensor& S_,
                           at::IntArrayRef type_index) {
  const LatRegShape s = check_latency_reg("latency_reg", w_, L_, S_, type_index);
  auto w = w_.contiguous(), L = L_.contiguous(), S = S_.contiguous();
  at::Tensor out = s.out_batched ? at::empty({s.rows}, w.options()) : at::empty({}, w.options());
  if (s.rows == 0) return out;
  const int64_t nw = s.w_batched ? s.rows : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "latency_reg_cpu", [&] {
    const auto P = column_sums<scalar_t>(w.const_data_ptr<scalar_t>(), L.const_data_ptr<scalar_t>(), s, nw);
    const auto st = type_weights<scalar_t>(S.const_data_ptr<scalar_t>(), s);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t r = 0; r < s.rows; ++r) {
      const double* p = P.data() + (s.w_batched ? r : 0) * s.k;
      double acc = 0.0;
      for (int64_t m = 0; m < s.k; ++m) acc += st[r * s.k + m] * p[m];
      o[r] = static_cast<scalar_t>(acc);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> latency_reg_backward_cpu(const at::Tensor& grad_,
                                                                        const at::Tensor& w_,
                                                                        const at::Tensor& L_,
                                                                        const at::Tensor& S_,
                                                                        at::IntArrayRef type_index) {
  const LatRegShape s = check_latency_reg_backward(grad_, w_, L_, S_, type_index);
  auto g = grad_.contiguous(), w = w_.contiguous(), L = L_.contiguous(), S = S_.contiguous();
  if (s.rows == 0) return {at::zeros_like(w), at::zeros_like(L), at::zeros_like(S)};
  // Every element of the three gradients is written below.
  at::Tensor gw = at::empty_like(w), gL = at::empty_like(L), gS = at::empty_like(S);
  const int64_t nw = s.w_batched ? s.rows : 1, ek = s.e * s.k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "latency_reg_backward_cpu", [&] {
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* Lp = L.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const auto P = column_sums<scalar_t>(wp, Lp, s, nw);
    // c[r, m] = g[r] * S[r, type(m)], and its sum over the rows.
    auto c = type_weights<scalar_t>(S.const_data_ptr<scalar_t>(), s);
    std::vector<double> csum(static_cast<size_t>(s.k), 0.0);
    for (int64_t r = 0; r < s.rows; ++r)
      for (int64_t m = 0; m < s.k; ++m) {
        c[r * s.k + m] *= static_cast<double>(gp[r]);
        csum[m] += c[r * s.k + m];
      }
    // grad_w = c * L (the row sum of c when w is shared by every sample).
    std::vector<double> Ld(static_cast<size_t>(ek));
    for (int64_t i = 0; i < ek; ++i) Ld[i] = static_cast<double>(Lp[i]);
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, nw, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const double* cr = s.w_batched ? c.data() + r * s.k : csum.data();
        scalar_t* out = gwp + r * ek;
        for (int64_t e = 0; e < s.e; ++e)
          for (int64_t m = 0; m < s.k; ++m)
            out[e * s.k + m] = static_cast<scalar_t>(cr[m] * Ld[e * s.k + m]);
      }
    });
    // grad_L = sum_r c[r] * w[r], streamed row by row through w.
    std::vector<double> accL(static_cast<size_t>(ek), 0.0);
    for (int64_t r = 0; r < nw; ++r) {
      const double* cr = s.w_batched ? c.data() + r * s.k : csum.data();
      const scalar_t* wr = wp + r * ek;
      for (int64_t e = 0; e < s.e; ++e)
        for (int64_t m = 0; m < s.k; ++m) accL[e * s.k + m] += cr[m] * static_cast<double>(wr[e * s.k + m]);
    }
    scalar_t* gLp = gL.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < ek; ++i) gLp[i] = static_cast<scalar_t>(accL[i]);
    // grad_S[t] = sum over the rows that use this S row of g * P summed over type t.
    const int64_t ns = s.s_batched ? s.rows : 1;
    std::vector<double> acc(static_cast<size_t>(ns * s.t), 0.0);
    for (int64_t r = 0; r < s.rows; ++r) {
      const double* p = P.data() + (s.w_batched ? r : 0) * s.k;
      double* a = acc.data() + (s.s_batched ? r : 0) * s.t;
      const double gr = static_cast<double>(gp[r]);
      for (int64_t m = 0; m < s.k; ++m)
        if (s.types[m] >= 0) a[s.types[m]] += gr * p[m];
    }
    scalar_t* gSp = gS.mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < ns * s.t; ++i) gSp[i] = static_cast<scalar_t>(acc[i]);
  });
  return {gw, gL, gS};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("latency_reg", &latency_reg_cpu);
  m.impl("latency_reg_backward", &latency_reg_backward_cpu);
}

}  // namespace dartscc
