// CUDA glue of hard_mixed_sum. The positions pos[n] (the row of
// outputs[index[n]] holding sample n) come from torch ops on the device, a
// running count over the one-hot of index. Validating index against the
// outputs' counts needs its values on the host: one small copy (the k counts
// and the number of out-of-range entries) per call, and the first bad entry
// is looked up only to word the error, with the CPU kernel's messages.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../hard_mixed_sum.h"
#include "cuda_glue.h"
#include "hard_mixed_sum_kernel.h"

namespace dartscc {
namespace {

// idx: the contiguous index [N] on the device. Returns pos [N] (int64, device).
at::Tensor positions(const at::Tensor& idx, at::TensorList outputs, const char* op) {
  const int64_t k = static_cast<int64_t>(outputs.size());
  const at::Tensor valid = idx.ge(0).logical_and(idx.lt(k));
  const at::Tensor safe = at::where(valid, idx, at::zeros_like(idx));
  const at::Tensor onehot = safe.unsqueeze(1).eq(at::arange(k, idx.options())).to(at::kLong);  // [N, k]
  const at::Tensor summary =
      at::cat({onehot.sum(0), valid.logical_not().sum().to(at::kLong).reshape({1})}).cpu();  // synchronises
  const int64_t* sm = summary.const_data_ptr<int64_t>();
  if (sm[k] > 0) {
    const at::Tensor host = idx.cpu();
    const int64_t* ix = host.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < host.numel(); ++i)
      TORCH_CHECK(ix[i] >= 0 && ix[i] < k, op, ": index[", i, "] = ", ix[i], " is not in [0, ", k, ")");
  }
  for (int64_t m = 0; m < k; ++m)
    TORCH_CHECK(sm[m] == outputs[m].size(0), op, ": index draws op ", m, " for ", sm[m], " samples but outputs[", m,
                "] has ", outputs[m].size(0), " rows");
  // Row of sample n in its op's output: how many earlier samples drew that op.
  return onehot.cumsum(0).gather(1, safe.unsqueeze(1)).squeeze(1).sub(1).contiguous();
}

cuda::HardSumShape kernel_shape(const HardShape& s) {
  cuda::HardSumShape ks;
  ks.k = static_cast<int>(s.k);
  ks.n = s.n;
  ks.inner = s.inner;
  ks.per_sample = s.per_sample;
  return ks;
}

at::Tensor hard_mixed_sum_cuda(at::TensorList outputs_in, const at::Tensor& weights_in, const at::Tensor& index) {
  const HardShape s = check_hard_mixed_sum("hard_mixed_sum", outputs_in, weights_in, index);
  c10::cuda::CUDAGuard guard(outputs_in[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  const at::Tensor w = weights_in.contiguous(), idx = index.contiguous();
  const at::Tensor pos = positions(idx, outputs, "hard_mixed_sum");
  at::Tensor y = at::empty(s.out_shape, outputs[0].options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "hard_mixed_sum_cuda", [&] {
    using T = cuda::kernel_t<scalar_t>;
    cuda::PtrTable<const T> o{};
    for (int64_t m = 0; m < s.k; ++m) o.p[m] = cuda::in_ptr<scalar_t>(outputs[m]);
    C10_CUDA_CHECK(cuda::hard_mixed_sum_forward<T>(o, cuda::in_ptr<scalar_t>(w), idx.const_data_ptr<int64_t>(),
                                                   pos.const_data_ptr<int64_t>(), cuda::out_ptr<scalar_t>(y),
                                                   kernel_shape(s), stream));
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hard_mixed_sum_backward_cuda(const at::Tensor& grad_in,
                                                                              at::TensorList outputs_in,
                                                                              const at::Tensor& weights_in,
                                                                              const at::Tensor& index) {
  const char* op = "hard_mixed_sum_backward";
  const HardShape s = check_hard_mixed_sum(op, outputs_in, weights_in, index);
  check_grad("hard_mixed_sum_backward", grad_in, s.out_shape, outputs_in[0]);
  c10::cuda::CUDAGuard guard(outputs_in[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  const at::Tensor w = weights_in.contiguous(), g = grad_in.contiguous(), idx = index.contiguous();
  const at::Tensor pos = positions(idx, outputs, op);
  std::vector<at::Tensor> grad_outputs;
  for (const auto& o : outputs) grad_outputs.push_back(at::empty_like(o));
  at::Tensor grad_w = at::zeros_like(w);
  if (g.numel() == 0) return {grad_outputs, grad_w};
  const cuda::HardSumShape ks = kernel_shape(s);
  at::Tensor workspace =
      at::empty({cuda::hard_mixed_sum_backward_workspace(ks)}, w.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "hard_mixed_sum_backward_cuda", [&] {
    using T = cuda::kernel_t<scalar_t>;
    cuda::PtrTable<const T> o{};
    cuda::PtrTable<T> go{};
    for (int64_t m = 0; m < s.k; ++m) {
      o.p[m] = cuda::in_ptr<scalar_t>(outputs[m]);
      go.p[m] = cuda::out_ptr<scalar_t>(grad_outputs[m]);
    }
    C10_CUDA_CHECK(cuda::hard_mixed_sum_backward<T>(
        cuda::in_ptr<scalar_t>(g), o, cuda::in_ptr<scalar_t>(w), idx.const_data_ptr<int64_t>(),
        pos.const_data_ptr<int64_t>(), go, cuda::out_ptr<scalar_t>(grad_w), workspace.mutable_data_ptr<double>(), ks,
        stream));
  });
  return {grad_outputs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CUDA, m) {
  m.impl("hard_mixed_sum", &hard_mixed_sum_cuda);
  m.impl("hard_mixed_sum_backward", &hard_mixed_sum_backward_cuda);
}

}  // namespace dartscc
