// CUDA glue of gumbel_softmax. The seed is a CPU int64 scalar even for CUDA
// logits (the op stays a pure function that torch.compile can trace); the
// shared check reads it on the host, with no device synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gumbel_softmax.h"
#include "cuda_glue.h"
#include "gumbel_softmax_kernel.h"

namespace dartscc {
namespace {

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cuda(const at::Tensor& logits_in, const at::Tensor& seed_t,
                                                       double tau, bool hard) {
  const uint64_t seed = check_gumbel_softmax(logits_in, seed_t, tau);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor y = at::empty_like(logits);
  at::Tensor soft = at::empty_like(logits);
  if (logits.numel() == 0) return {y, soft};
  const int64_t k = logits.size(-1), rows = logits.numel() / k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_cuda", [&] {
    C10_CUDA_CHECK(cuda::gumbel_softmax_forward<cuda::kernel_t<scalar_t>>(
        cuda::in_ptr<scalar_t>(logits), cuda::out_ptr<scalar_t>(y), cuda::out_ptr<scalar_t>(soft), rows, k, seed,
        tau, hard, stream));
  });
  return {y, soft};
}

at::Tensor gumbel_softmax_backward_cuda(const at::Tensor& grad_in, const at::Tensor& soft_in, double tau) {
  check_gumbel_softmax_backward(grad_in, soft_in, tau);
  c10::cuda::CUDAGuard guard(soft_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor grad = grad_in.contiguous(), soft = soft_in.contiguous();
  at::Tensor out = at::empty_like(soft);
  if (soft.numel() == 0) return out;
  const int64_t k = soft.size(-1), rows = soft.numel() / k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, soft.scalar_type(), "gumbel_softmax_backward_cuda",
                                  [&] {
    C10_CUDA_CHECK(cuda::gumbel_softmax_backward<cuda::kernel_t<scalar_t>>(
        cuda::in_ptr<scalar_t>(grad), cuda::in_ptr<scalar_t>(soft), cuda::out_ptr<scalar_t>(out), rows, k, tau,
        stream));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CUDA, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cuda);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cuda);
}

}  // namespace dartscc
