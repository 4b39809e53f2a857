// CUDA glue of latency_reg: checks (shared with the CPU kernel), device guard,
// current stream, early return on empty input, launch, check the launch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../latency_reg.h"
#include "cuda_glue.h"
#include "latency_reg_kernel.h"

namespace dartscc {
namespace {

// grad_s_kernel keeps one accumulator per op type in an array of kMaxOps.
static_assert(kMaxTypes <= kMaxOps, "latency_reg's CUDA kernels hold at most kMaxOps op types");

cuda::LatRegParams params(const LatRegShape& s) {
  cuda::LatRegParams p;
  p.rows = s.rows;
  p.e = s.e;
  p.k = s.k;
  p.t = s.t;
  p.w_batched = s.w_batched;
  p.s_batched = s.s_batched;
  for (int m = 0; m < kMaxOps; ++m) p.types[m] = m < s.k ? s.types[m] : -1;
  return p;
}

at::Tensor latency_reg_cuda(const at::Tensor& w_in, const at::Tensor& L_in, const at::Tensor& S_in,
                            at::IntArrayRef type_index) {
  const LatRegShape s = check_latency_reg("latency_reg", w_in, L_in, S_in, type_index);
  c10::cuda::CUDAGuard guard(w_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor w = w_in.contiguous(), L = L_in.contiguous(), S = S_in.contiguous();
  at::Tensor out = s.out_batched ? at::empty({s.rows}, w.options()) : at::empty({}, w.options());
  if (s.rows == 0) return out;
  const cuda::LatRegParams p = params(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "latency_reg_cuda", [&] {
    C10_CUDA_CHECK(cuda::latency_reg_forward<cuda::kernel_t<scalar_t>>(
        cuda::in_ptr<scalar_t>(w), cuda::in_ptr<scalar_t>(L), cuda::in_ptr<scalar_t>(S), cuda::out_ptr<scalar_t>(out),
        p, stream));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> latency_reg_backward_cuda(const at::Tensor& grad_in,
                                                                         const at::Tensor& w_in,
                                                                         const at::Tensor& L_in,
                                                                         const at::Tensor& S_in,
                                                                         at::IntArrayRef type_index) {
  const LatRegShape s = check_latency_reg_backward(grad_in, w_in, L_in, S_in, type_index);
  c10::cuda::CUDAGuard guard(w_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor g = grad_in.contiguous(), w = w_in.contiguous(), L = L_in.contiguous(), S = S_in.contiguous();
  if (s.rows == 0) return {at::zeros_like(w), at::zeros_like(L), at::zeros_like(S)};
  at::Tensor gw = at::empty_like(w), gL = at::empty_like(L), gS = at::empty_like(S);
  const cuda::LatRegParams p = params(s);
  at::Tensor scratch = at::empty({cuda::latency_reg_scratch(p)}, w.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "latency_reg_backward_cuda", [&] {
    C10_CUDA_CHECK(cuda::latency_reg_backward<cuda::kernel_t<scalar_t>>(
        cuda::in_ptr<scalar_t>(g), cuda::in_ptr<scalar_t>(w), cuda::in_ptr<scalar_t>(L), cuda::in_ptr<scalar_t>(S),
        cuda::out_ptr<scalar_t>(gw), cuda::out_ptr<scalar_t>(gL), cuda::out_ptr<scalar_t>(gS),
        scratch.mutable_data_ptr<double>(), p, stream));
  });
  return {gw, gL, gS};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CUDA, m) {
  m.impl("latency_reg", &latency_reg_cuda);
  m.impl("latency_reg_backward", &latency_reg_backward_cuda);
}

}  // namespace dartscc
