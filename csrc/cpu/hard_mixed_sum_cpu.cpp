#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../common/primitives.h"
#include "../hard_mixed_sum.h"

namespace dartscc {
namespace {

// pos[n]: the row of outputs[index[n]] that holds sample n. Also validates the
// index against the outputs' counts, which the shape check cannot see.
std::vector<int64_t> positions(const at::Tensor& index, at::TensorList outputs, const char* op) {
  const int64_t n = index.size(0), k = static_cast<int64_t>(outputs.size());
  std::vector<int64_t> pos(static_cast<size_t>(n)), seen(static_cast<size_t>(k), 0);
  at::Tensor idx = index.contiguous();
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ix[i] >= 0 && ix[i] < k, op, ": index[", i, "] = ", ix[i], " is not in [0, ", k, ")");
    pos[i] = seen[ix[i]]++;
  }
  for (int64_t m = 0; m < k; ++m)
    TORCH_CHECK(seen[m] == outputs[m].size(0), op, ": index draws op ", m, " for ", seen[m],
                " samples but outputs[", m, "] has ", outputs[m].size(0), " rows");
  return pos;
}

at::Tensor hard_mixed_sum_cpu(at::TensorList outputs_in, const at::Tensor& weights_in, const at::Tensor& index) {
  const HardShape s = check_hard_mixed_sum("hard_mixed_sum", outputs_in, weights_in, index);
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  const at::Tensor w = weights_in.contiguous();
  const auto pos = positions(index, outputs, "hard_mixed_sum");
  at::Tensor idx = index.contiguous();
  at::Tensor y = at::empty(s.out_shape, outputs[0].options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "hard_mixed_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> o;
    for (const auto& t : outputs) o.push_back(t.const_data_ptr<scalar_t>());
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* wn = pw + (s.per_sample ? n * s.k : 0);
        const int64_t m = ix[n];
        acc_t rest = 0;
        for (int64_t j = 0; j < s.k; ++j)
          if (j != m) rest += static_cast<acc_t>(wn[j]);
        const acc_t wm = static_cast<acc_t>(wn[m]);
        const scalar_t* src = o[m] + pos[n] * s.inner;
        scalar_t* dst = py + n * s.inner;
        for (int64_t i = 0; i < s.inner; ++i) dst[i] = static_cast<scalar_t>(wm * static_cast<acc_t>(src[i]) + rest);
      }
    });
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hard_mixed_sum_backward_cpu(const at::Tensor& grad_in,
                                                                             at::TensorList outputs_in,
                                                                             const at::Tensor& weights_in,
                                                                             const at::Tensor& index) {
  const HardShape s = check_hard_mixed_sum("hard_mixed_sum_backward", outputs_in, weights_in, index);
  check_grad("hard_mixed_sum_backward", grad_in, s.out_shape, outputs_in[0]);
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  const at::Tensor w = weights_in.contiguous(), g = grad_in.contiguous(), idx = index.contiguous();
  const auto pos = positions(index, outputs, "hard_mixed_sum_backward");
  std::vector<at::Tensor> grad_outputs;
  for (const auto& o : outputs) grad_outputs.push_back(at::empty_like(o));
  at::Tensor grad_w = at::zeros_like(w);
  if (s.n == 0) return {grad_outputs, grad_w};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "hard_mixed_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> o;
    std::vector<scalar_t*> go;
    for (const auto& t : outputs) o.push_back(t.const_data_ptr<scalar_t>());
    for (auto& t : grad_outputs) go.push_back(t.mutable_data_ptr<scalar_t>());
    const scalar_t* pw = w.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const int64_t* ix = idx.const_data_ptr<int64_t>();
    // Per-sample (dot with the drawn op's output, plain sum) pairs, reduced below.
    std::vector<double> dot(static_cast<size_t>(s.n)), sum(static_cast<size_t>(s.n));
    at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t m = ix[n];
        const acc_t wm = static_cast<acc_t>(pw[(s.per_sample ? n * s.k : 0) + m]);
        const scalar_t* src = o[m] + pos[n] * s.inner;
        scalar_t* dst = go[m] + pos[n] * s.inner;
        const scalar_t* gn = pg + n * s.inner;
        acc_t d = 0, t = 0;
        for (int64_t i = 0; i < s.inner; ++i) {
          const acc_t gi = static_cast<acc_t>(gn[i]);
          dst[i] = static_cast<scalar_t>(wm * gi);
          d += gi * static_cast<acc_t>(src[i]);
          t += gi;
        }
        dot[n] = d;
        sum[n] = t;
      }
    });
    std::vector<double> acc(static_cast<size_t>(s.per_sample ? s.n * s.k : s.k), 0.0);
    for (int64_t n = 0; n < s.n; ++n) {
      double* an = acc.data() + (s.per_sample ? n * s.k : 0);
      for (int64_t j = 0; j < s.k; ++j) an[j] += j == ix[n] ? dot[n] : sum[n];
    }
    scalar_t* pgw = grad_w.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < acc.size(); ++i) pgw[i] = static_cast<scalar_t>(acc[i]);
  });
  return {grad_outputs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("hard_mixed_sum", &hard_mixed_sum_cpu);
  m.impl("hard_mixed_sum_backward", &hard_mixed_sum_backward_cpu);
}

}  // namespace dartscc
