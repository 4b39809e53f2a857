#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../checks.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace dartscc {
namespace {

// Fixed-size chunks (not one per thread) keep the reduction order, and so the
// weight gradient, independent of the thread count.
constexpr int64_t kChunk = 16384;
constexpr int64_t kBlock = 256;  // the accumulator lives in registers/L1

// buf[j] (+)= sum of up to four weighted outputs: one pass over the block per
// four candidates, not one per candidate (the block traffic, not the multiply,
// is what costs).
constexpr int64_t kStreamBytes = int64_t(8) << 20;

#if defined(__SSE2__)
// gom = w * g with non-temporal stores, and returns <g, o>; four independent
// accumulators, so the order of the sum is fixed by the code, not the compiler.
inline float scale_dot_stream(const float* __restrict g, const float* __restrict o, float w,
                              float* __restrict gom, int64_t len) {
  float dot = 0.f;
  int64_t j = 0;
  for (; j < len && (reinterpret_cast<uintptr_t>(gom + j) & 15) != 0; ++j) {
    gom[j] = w * g[j];
    dot += g[j] * o[j];
  }
  const __m128 wv = _mm_set1_ps(w);
  __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; j + 16 <= len; j += 16) {
    const __m128 g0 = _mm_loadu_ps(g + j), g1 = _mm_loadu_ps(g + j + 4), g2 = _mm_loadu_ps(g + j + 8),
                 g3 = _mm_loadu_ps(g + j + 12);
    _mm_stream_ps(gom + j, _mm_mul_ps(wv, g0));
    _mm_stream_ps(gom + j + 4, _mm_mul_ps(wv, g1));
    _mm_stream_ps(gom + j + 8, _mm_mul_ps(wv, g2));
    _mm_stream_ps(gom + j + 12, _mm_mul_ps(wv, g3));
    a0 = _mm_add_ps(a0, _mm_mul_ps(g0, _mm_loadu_ps(o + j)));
    a1 = _mm_add_ps(a1, _mm_mul_ps(g1, _mm_loadu_ps(o + j + 4)));
    a2 = _mm_add_ps(a2, _mm_mul_ps(g2, _mm_loadu_ps(o + j + 8)));
    a3 = _mm_add_ps(a3, _mm_mul_ps(g3, _mm_loadu_ps(o + j + 12)));
  }
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
  for (; j < len; ++j) {
    gom[j] = w * g[j];
    dot += g[j] * o[j];
  }
  return dot + ((t[0] + t[1]) + (t[2] + t[3]));
}
#endif

template <bool kAccumulate, typename scalar_t, typename acc_t>
inline void weighted_group(acc_t* __restrict buf, const scalar_t* const* o, const acc_t* wl, int64_t m,
                           int64_t g, int64_t b, int64_t len) {
  const scalar_t* __restrict a0 = o[m] + b;
  const scalar_t* __restrict a1 = o[m + (g > 1 ? 1 : 0)] + b;
  const scalar_t* __restrict a2 = o[m + (g > 2 ? 2 : 0)] + b;
  const scalar_t* __restrict a3 = o[m + (g > 3 ? 3 : 0)] + b;
  const acc_t w0 = wl[m], w1 = g > 1 ? wl[m + 1] : acc_t(0), w2 = g > 2 ? wl[m + 2] : acc_t(0),
              w3 = g > 3 ? wl[m + 3] : acc_t(0);
  for (int64_t j = 0; j < len; ++j) {
    const acc_t v = w0 * static_cast<acc_t>(a0[j]) + w1 * static_cast<acc_t>(a1[j]) +
                    w2 * static_cast<acc_t>(a2[j]) + w3 * static_cast<acc_t>(a3[j]);
    buf[j] = kAccumulate ? buf[j] + v : v;
  }
}

template <typename scalar_t>
void forward_kernel(const std::vector<const scalar_t*>& o, const scalar_t* w, const MixedShape& s,
                    scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = s.k, chunks = (s.inner + kChunk - 1) / kChunk;
  at::parallel_for(0, s.rows * chunks, 1, [&](int64_t begin, int64_t end) {
    acc_t wl[kMaxOps];
    acc_t buf[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / chunks, c = t % chunks;
      for (int64_t m = 0; m < k; ++m) wl[m] = static_cast<acc_t>(w[s.per_sample ? row * k + m : m]);
      const int64_t start = row * s.inner + c * kChunk;
      const int64_t stop = start + std::min(kChunk, s.inner - c * kChunk);
      for (int64_t b = start; b < stop; b += kBlock) {
        const int64_t len = std::min(kBlock, stop - b);
        weighted_group<false>(buf, o.data(), wl, 0, std::min<int64_t>(k, 4), b, len);
        for (int64_t m = 4; m < k; m += 4) weighted_group<true>(buf, o.data(), wl, m, std::min<int64_t>(k - m, 4), b, len);
        scalar_t* yb = y + b;
        for (int64_t j = 0; j < len; ++j) yb[j] = static_cast<scalar_t>(buf[j]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* g, const std::vector<const scalar_t*>& o, const scalar_t* w,
                     const MixedShape& s, const std::vector<scalar_t*>& go, scalar_t* gw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t k = s.k, chunks = (s.inner + kChunk - 1) / kChunk;
  const int64_t tasks = s.rows * chunks;
  std::vector<double> partial(static_cast<size_t>(tasks * k), 0.0);
  // Past the cache, the k gradients go straight to memory (no read-for-ownership).
  const bool stream = k * s.rows * s.inner * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    acc_t wl[kMaxOps];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t / chunks, c = t % chunks;
      for (int64_t m = 0; m < k; ++m) wl[m] = static_cast<acc_t>(w[s.per_sample ? row * k + m : m]);
      const int64_t start = row * s.inner + c * kChunk;
      const int64_t stop = start + std::min(kChunk, s.inner - c * kChunk);
      double* part = partial.data() + t * k;
      for (int64_t b = start; b < stop; b += kBlock) {
        const int64_t len = std::min(kBlock, stop - b);
        const scalar_t* __restrict gb = g + b;
        for (int64_t m = 0; m < k; ++m) {
          const scalar_t* __restrict om = o[m] + b;
          scalar_t* __restrict gom = go[m] + b;
          const acc_t wm = wl[m];
#if defined(__SSE2__)
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (stream) {
              part[m] += static_cast<double>(scale_dot_stream(gb, om, wm, gom, len));
              continue;
            }
          }
#endif
          // independent lanes: vectorised without reassociating the sum
          constexpr int L = 16;
          acc_t lanes[L] = {};
          int64_t j = 0;
          for (; j + L <= len; j += L)
            for (int l = 0; l < L; ++l) {
              const acc_t gj = static_cast<acc_t>(gb[j + l]);
              gom[j + l] = static_cast<scalar_t>(wm * gj);
              lanes[l] += gj * static_cast<acc_t>(om[j + l]);
            }
          acc_t dot = 0;
          for (; j < len; ++j) {
            const acc_t gj = static_cast<acc_t>(gb[j]);
            gom[j] = static_cast<scalar_t>(wm * gj);
            dot += gj * static_cast<acc_t>(om[j]);
          }
          for (int l = 0; l < L; ++l) dot += lanes[l];
          part[m] += static_cast<double>(dot);
        }
      }
    }
  });
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
  // Reduce the chunk partials in a fixed order.
  const int64_t out_rows = s.per_sample ? s.rows : 1;
  for (int64_t r = 0; r < out_rows; ++r) {
    for (int64_t m = 0; m < k; ++m) {
      double acc = 0.0;
      const int64_t t0 = s.per_sample ? r * chunks : 0, t1 = s.per_sample ? (r + 1) * chunks : tasks;
      for (int64_t t = t0; t < t1; ++t) acc += partial[t * k + m];
      gw[r * k + m] = static_cast<scalar_t>(acc);
    }
  }
}

at::Tensor mixed_sum_cpu(at::TensorList outputs, const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum", outputs, weights);
  auto outs = same_layout(outputs, s.per_sample);
  auto w = weights.contiguous();
  at::Tensor y = at::empty_like(outs[0], at::MemoryFormat::Preserve);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cpu", [&] {
    std::vector<const scalar_t*> o;
    for (const auto& t : outs) o.push_back(t.const_data_ptr<scalar_t>());
    forward_kernel<scalar_t>(o, w.const_data_ptr<scalar_t>(), s, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad,
                                                                        at::TensorList outputs,
                                                                        const at::Tensor& weights) {
  const MixedShape s = check_mixed_sum("mixed_sum_backward", outputs, weights);
  check_grad("mixed_sum_backward", grad, outputs[0].sizes(), outputs[0]);
  auto outs = same_layout(outputs, s.per_sample);
  // grad must follow the outputs' layout; it usually does already.
  at::Tensor g = grad.strides() == outs[0].strides() ? grad : grad.contiguous();
  if (g.strides() != outs[0].strides()) {
    for (auto& t : outs) t = t.contiguous();
  }
  auto w = weights.contiguous();
  std::vector<at::Tensor> grad_outs;
  for (const auto& t : outs) grad_outs.push_back(at::empty_like(t, at::MemoryFormat::Preserve));
  at::Tensor grad_w = at::zeros_like(w);
  if (g.numel() == 0) {
    for (auto& t : grad_outs) t.zero_();
    return {grad_outs, grad_w};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cpu", [&] {
    std::vector<const scalar_t*> o;
    std::vector<scalar_t*> go;
    for (const auto& t : outs) o.push_back(t.const_data_ptr<scalar_t>());
    for (auto& t : grad_outs) go.push_back(t.mutable_data_ptr<scalar_t>());
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), o, w.const_data_ptr<scalar_t>(), s, go,
                              grad_w.mutable_data_ptr<scalar_t>());
  });
  return {grad_outs, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace dartscc
