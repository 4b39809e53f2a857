// CUDA glue of mixed_op_free: the CPU path's checks, result layouts and stats
// handling, then the torch-free kernels of mixed_op_free_kernel.cu. The slot
// table (codes, param outputs, pool rows) goes to the kernels by value.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "../checks.h"
#include "../common/primitives.h"
#include "../mixed_op_free.h"
#include "cuda_glue.h"
#include "mixed_op_free_kernel.h"

namespace dartscc {
namespace {

template <typename scalar_t>
cuda::View4<const cuda::kernel_t<scalar_t>> view_in(const at::Tensor& t) {
  cuda::View4<const cuda::kernel_t<scalar_t>> v{};
  v.data = cuda::in_ptr<scalar_t>(t);
  for (int d = 0; d < 4; ++d) v.s[d] = t.stride(d);
  return v;
}

template <typename scalar_t>
cuda::View4<cuda::kernel_t<scalar_t>> view_out(const at::Tensor& t) {
  cuda::View4<cuda::kernel_t<scalar_t>> v{};
  v.data = cuda::out_ptr<scalar_t>(t);
  for (int d = 0; d < 4; ++d) v.s[d] = t.stride(d);
  return v;
}

template <typename scalar_t>
cuda::FreeProblem<cuda::kernel_t<scalar_t>> make_problem(const FreeShape& s, const at::Tensor& x,
                                                         at::TensorList param_outputs, const at::Tensor& w,
                                                         at::IntArrayRef prims, double eps) {
  cuda::FreeProblem<cuda::kernel_t<scalar_t>> p{};
  p.n = s.n;
  p.c = s.c;
  p.h = s.h;
  p.w = s.w;
  p.ho = s.ho;
  p.wo = s.wo;
  p.stride = s.stride;
  p.k = static_cast<int>(s.k);
  p.pools = static_cast<int>(s.pool_slots.size());
  p.per_sample = s.per_sample;
  p.eps = eps;
  p.x = view_in<scalar_t>(x);
  p.weights = cuda::in_ptr<scalar_t>(w);
  for (int m = 0; m < kMaxOps; ++m) p.slots[m].code = kNone;
  for (int64_t m = 0; m < s.k; ++m) p.slots[m].code = static_cast<int>(prims[m]);
  for (size_t j = 0; j < s.param_slots.size(); ++j)
    p.slots[s.param_slots[j]].src = view_in<scalar_t>(param_outputs[j]);
  for (size_t q = 0; q < s.pool_slots.size(); ++q) {
    p.slots[s.pool_slots[q]].pool = static_cast<int>(q);
    p.pool_slot[q] = static_cast<int>(s.pool_slots[q]);
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor> mixed_op_free_cuda(const at::Tensor& x, at::TensorList param_outputs,
                                                      const at::Tensor& weights, at::IntArrayRef prims,
                                                      int64_t stride, double eps,
                                                      const std::optional<at::Tensor>& bn_stats) {
  const FreeShape s = check_mixed_op_free("mixed_op_free", x, param_outputs, weights, prims, stride, eps);
  const int64_t P = static_cast<int64_t>(s.pool_slots.size());
  if (bn_stats) check_stats("mixed_op_free", "bn_stats", *bn_stats, s, x);
  c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::MemoryFormat format = result_format(x);
  at::Tensor y = at::empty({s.n, s.c, s.ho, s.wo}, x.options().memory_format(format));
  // Stats in the accumulation type (float for the half types), as on the CPU.
  at::Tensor stats = at::empty({P, 2, s.c}, x.options().dtype(at::toOpMathType(x.scalar_type())));
  const at::Tensor w = weights.contiguous();
  if (bn_stats) {
    stats.copy_(*bn_stats);
  } else if (s.n * s.ho * s.wo == 0) {
    stats.zero_();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixed_op_free_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = make_problem<scalar_t>(s, x, param_outputs, w, prims, eps);
    if (!bn_stats) C10_CUDA_CHECK(cuda::mixed_op_free_batch_stats(p, stats.mutable_data_ptr<acc_t>(), stream));
    if (y.numel() == 0) return;
    C10_CUDA_CHECK(cuda::mixed_op_free_forward(p, stats.const_data_ptr<acc_t>(), view_out<scalar_t>(y),
                                               format == at::MemoryFormat::ChannelsLast, stream));
  });
  return {y, stats};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> mixed_op_free_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, at::TensorList param_outputs, const at::Tensor& weights,
    at::IntArrayRef prims, int64_t stride, double eps, const at::Tensor& stats, bool stats_fixed) {
  const char* op = "mixed_op_free_backward";
  const FreeShape s = check_mixed_op_free(op, x, param_outputs, weights, prims, stride, eps);
  check_stats(op, "stats", stats, s, x);
  check_grad(op, grad, {s.n, s.c, s.ho, s.wo}, x);
  c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t P = static_cast<int64_t>(s.pool_slots.size());
  const at::MemoryFormat format = result_format(x);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  std::vector<at::Tensor> gp;
  for (const auto& p : param_outputs) gp.push_back(at::empty(p.sizes(), p.options().memory_format(result_format(p))));
  const at::Tensor w = weights.contiguous();
  at::Tensor gw = at::zeros_like(w);
  if (x.numel() == 0) {
    gx.zero_();
    return {gx, gp, gw};
  }
  // The CPU kernel reads stats through double into the accumulation type;
  // one rounding either way.
  const at::Tensor st = stats.to(at::toOpMathType(x.scalar_type())).contiguous();
  at::Tensor bn_terms = at::empty({2 * P * s.c}, st.options());
  at::Tensor partial = at::empty({s.n * s.c * s.k}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixed_op_free_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = make_problem<scalar_t>(s, x, param_outputs, w, prims, eps);
    cuda::FreeGrads<cuda::kernel_t<scalar_t>> g{};
    g.grad = view_in<scalar_t>(grad);
    g.gx = view_out<scalar_t>(gx);
    g.gx_channels_last = format == at::MemoryFormat::ChannelsLast;
    for (size_t j = 0; j < s.param_slots.size(); ++j) g.gslot[s.param_slots[j]] = view_out<scalar_t>(gp[j]);
    g.gw = cuda::out_ptr<scalar_t>(gw);
    C10_CUDA_CHECK(cuda::mixed_op_free_backward(p, st.const_data_ptr<acc_t>(), stats_fixed, g,
                                                bn_terms.mutable_data_ptr<acc_t>(),
                                                partial.mutable_data_ptr<double>(), stream));
  });
  return {gx, gp, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CUDA, m) {
  m.impl("mixed_op_free", &mixed_op_free_cuda);
  m.impl("mixed_op_free_backward", &mixed_op_free_backward_cuda);
}

}  // namespace dartscc
