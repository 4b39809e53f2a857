// CUDA glue of mixed_sum: the CPU path's checks and layout rules, then the
// torch-free kernels of mixed_sum_kernel.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "cuda_glue.h"
#include "mixed_sum_kernel.h"

namespace dartscc {
namespace {

cuda::MixedSumShape kernel_shape(const MixedShape& s) {
  cuda::MixedSumShape ks;
  ks.k = static_cast<int>(s.k);
  ks.rows = s.rows;
  ks.inner = s.inner;
  ks.per_sample = s.per_sample;
  return ks;
}

at::Tensor mixed_sum_cuda(at::TensorList outputs, const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum", outputs, weights);
  c10::cuda::CUDAGuard guard(outputs[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto outs = same_layout(outputs, s.per_sample);
  const at::Tensor w = weights.contiguous();
  at::Tensor y = at::empty_like(outs[0], at::MemoryFormat::Preserve);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cuda", [&] {
    using T = cuda::kernel_t<scalar_t>;
    cuda::PtrTable<const T> o{};
    for (int64_t m = 0; m < s.k; ++m) o.p[m] = cuda::in_ptr<scalar_t>(outs[m]);
    C10_CUDA_CHECK(cuda::mixed_sum_forward<T>(o, cuda::in_ptr<scalar_t>(w), cuda::out_ptr<scalar_t>(y),
                                              kernel_shape(s), stream));
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad,
                                                                         at::TensorList outputs,
                                                                         const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum_backward", outputs, weights);
  check_grad("mixed_sum_backward", grad, outputs[0].sizes(), outputs[0]);
  // The CPU kernel cannot see a grad on another device (dispatch would pick
  // CUDA), so only this backend needs the check.
  check_same_device("mixed_sum_backward", "grad", grad, outputs[0]);
  c10::cuda::CUDAGuard guard(outputs[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto outs = same_layout(outputs, s.per_sample);
  // grad must follow the outputs' layout; it usually does already.
  at::Tensor g = grad.strides() == outs[0].strides() ? grad : grad.contiguous();
  if (g.strides() != outs[0].strides()) {
    for (auto& t : outs) t = t.contiguous();
  }
  const at::Tensor w = weights.contiguous();
  std::vector<at::Tensor> grad_outs;
  for (const auto& t : outs) grad_outs.push_back(at::empty_like(t, at::MemoryFormat::Preserve));
  at::Tensor grad_w = at::zeros_like(w);
  if (g.numel() == 0) {
    for (auto& t : grad_outs) t.zero_();
    return {grad_outs, grad_w};
  }
  const cuda::MixedSumShape ks = kernel_shape(s);
  at::Tensor workspace = at::empty({cuda::mixed_sum_backward_workspace(ks)}, w.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cuda", [&] {
    using T = cuda::kernel_t<scalar_t>;
    cuda::PtrTable<const T> o{};
    cuda::PtrTable<T> go{};
    for (int64_t m = 0; m < s.k; ++m) {
      o.p[m] = cuda::in_ptr<scalar_t>(outs[m]);
      go.p[m] = cuda::out_ptr<scalar_t>(grad_outs[m]);
    }
    C10_CUDA_CHECK(cuda::mixed_sum_backward<T>(cuda::in_ptr<scalar_t>(g), o, cuda::in_ptr<scalar_t>(w), go,
                                               cuda::out_ptr<scalar_t>(grad_w),
                                               workspace.mutable_data_ptr<double>(), ks, stream));
  });
  return {grad_outs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace dartscc
