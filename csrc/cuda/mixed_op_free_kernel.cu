// mixed_op_free on CUDA: the CPU kernel's arithmetic (same windows, same
// first-maximum argmax with NaN winning, same accumulation order per output
// element), reorganised for the GPU:
//   - batch statistics and the BatchNorm backward terms: one block per
//     (pool slot, channel), reduced in double in a fixed order;
//   - the forward: one thread per output element, in y's memory order;
//   - the backward: one block per (n, c) plane for the param-slot gradients
//     and the weight-gradient dots (per-plane partials, reduced in a fixed
//     order), and one thread per input pixel for grad x, which visits the <= 9
//     windows containing the pixel and recomputes their argmax: a gather, so
//     no atomics, and the sum runs in the CPU kernel's order.
// Pool outputs are never stored: every pass recomputes them from x.
#include <algorithm>

#include "kernel_common.cuh"
#include "mixed_op_free_kernel.h"

namespace dartscc {
namespace cuda {
namespace {

constexpr int kChannelThreads = 512;  // one block reduces a whole channel

// The slot table in shared memory: indexing the kernel-parameter copy with a
// runtime slot index would copy it into every thread's local memory.
template <typename T>
struct SharedSlots {
  FreeSlot<T> slot[kMaxOps];
  int pool_slot[kMaxOps];
};

template <typename T>
__device__ __forceinline__ void slots_to_shared(const FreeProblem<T>& p, SharedSlots<T>* sh) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int m = 0; m < kMaxOps; ++m) {
      sh->slot[m] = p.slots[m];
      sh->pool_slot[m] = p.pool_slot[m];
    }
  }
  __syncthreads();
}

// The 3x3, padding-1 window of output pixel (ho, wo), clipped to the input.
struct Window {
  int64_t h0, h1, w0, w1;
  __device__ Window(int64_t ho, int64_t wo, int64_t stride, int64_t H, int64_t W) {
    h0 = max(ho * stride - 1, int64_t(0));
    h1 = min(ho * stride + 2, H);
    w0 = max(wo * stride - 1, int64_t(0));
    w1 = min(wo * stride + 2, W);
  }
  __device__ int64_t count() const { return (h1 - h0) * (w1 - w0); }
};

// Max over the window; *arg gets h * W + w of the first maximum in scan
// order, a NaN winning at once (torch's max_pool2d choice, and the CPU's).
template <typename A, typename T>
__device__ __forceinline__ A window_max(const T* xp, int64_t sh, int64_t sw, const Window& win, int64_t W,
                                        int64_t* arg) {
  A best = -static_cast<A>(INFINITY);
  int64_t where = win.h0 * W + win.w0;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const A v = to_acc(xp[h * sh + w * sw]);
      if (v > best || isnan(v)) {
        best = v;
        where = h * W + w;
        if (isnan(v)) {
          *arg = where;
          return v;
        }
      }
    }
  *arg = where;
  return best;
}

template <typename A, typename T>
__device__ __forceinline__ A window_avg(const T* xp, int64_t sh, int64_t sw, const Window& win) {
  A sum = 0;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) sum += to_acc(xp[h * sh + w * sw]);
  return sum / static_cast<A>(win.count());
}

template <typename A, typename T>
__device__ __forceinline__ A pool_value(bool is_max, const T* xp, int64_t sh, int64_t sw, const Window& win,
                                        int64_t W) {
  int64_t arg;
  return is_max ? window_max<A>(xp, sh, sw, win, W, &arg) : window_avg<A>(xp, sh, sw, win);
}

template <typename T>
__device__ __forceinline__ T* plane(const View4<T>& v, int64_t n, int64_t c) {
  return v.data + n * v.s[0] + c * v.s[1];
}

template <typename T>
__device__ __forceinline__ acc_type<T> weight(const FreeProblem<T>& p, int64_t n, int m) {
  return to_acc(p.weights[(p.per_sample ? n * p.k : 0) + m]);
}

template <typename A>
__device__ __forceinline__ A invstd(const A* stats, int q, int64_t c, int64_t C, double eps) {
  return A(1) / sqrt(stats[(q * 2 + 1) * C + c] + static_cast<A>(eps));
}

// Linear index -> (n, c, h, w) in NCHW or NHWC memory order.
__device__ __forceinline__ void unflatten(int64_t i, int64_t C, int64_t H, int64_t W, bool channels_last,
                                          int64_t* n, int64_t* c, int64_t* h, int64_t* w) {
  if (channels_last) {
    *c = i % C;
    i /= C;
    *w = i % W;
    i /= W;
    *h = i % H;
    *n = i / H;
  } else {
    *w = i % W;
    i /= W;
    *h = i % H;
    i /= H;
    *c = i % C;
    *n = i / C;
  }
}

// One block per (pool q, channel c): mean and biased variance of the pool's
// output over (n, ho, wo), shifted by the first value so the one-pass variance
// does not cancel (as the CPU kernel).
template <typename T>
__global__ void __launch_bounds__(kChannelThreads)
    batch_stats_kernel(const FreeProblem<T> p, acc_type<T>* __restrict__ stats) {
  using A = acc_type<T>;
  __shared__ SharedSlots<T> sh;
  __shared__ double red[kWarp];
  slots_to_shared(p, &sh);
  const int64_t hw = p.ho * p.wo, M = p.n * hw;
  for (int64_t b = blockIdx.x; b < p.pools * p.c; b += gridDim.x) {
    const int q = static_cast<int>(b / p.c);
    const int64_t c = b % p.c;
    const bool mx = sh.slot[sh.pool_slot[q]].code == kMaxPool;
    const double shift =
        pool_value<A>(mx, plane(p.x, 0, c), p.x.s[2], p.x.s[3], Window(0, 0, p.stride, p.h, p.w), p.w);
    double s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      const int64_t n = j / hw, ho = (j % hw) / p.wo, wo = j % p.wo;
      const double v =
          pool_value<A>(mx, plane(p.x, n, c), p.x.s[2], p.x.s[3], Window(ho, wo, p.stride, p.h, p.w), p.w);
      s1 += v - shift;
      s2 += (v - shift) * (v - shift);
    }
    s1 = block_sum(s1, red);
    s2 = block_sum(s2, red);
    if (threadIdx.x == 0) {
      const double Md = static_cast<double>(M), mu = s1 / Md;
      stats[(q * 2) * p.c + c] = static_cast<A>(shift + mu);
      stats[(q * 2 + 1) * p.c + c] = static_cast<A>(max(s2 / Md - mu * mu, 0.0));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const FreeProblem<T> p, const acc_type<T>* __restrict__ stats, View4<T> y, bool y_cl) {
  using A = acc_type<T>;
  __shared__ SharedSlots<T> sh;
  slots_to_shared(p, &sh);
  const int64_t total = p.n * p.c * p.ho * p.wo;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ho, wo;
    unflatten(i, p.c, p.ho, p.wo, y_cl, &n, &c, &ho, &wo);
    const T* xp = plane(p.x, n, c);
    A acc = 0;
    for (int m = 0; m < p.k; ++m) {
      const int code = sh.slot[m].code;
      const A wm = weight(p, n, m);
      if (code == kParam) {
        const View4<const T>& v = sh.slot[m].src;
        acc += wm * to_acc(plane(v, n, c)[ho * v.s[2] + wo * v.s[3]]);
      } else if (code == kIdentity) {
        acc += wm * to_acc(xp[ho * p.x.s[2] + wo * p.x.s[3]]);
      } else if (code == kMaxPool || code == kAvgPool) {
        const int q = sh.slot[m].pool;
        const A mu = stats[(q * 2) * p.c + c], is = invstd(stats, q, c, p.c, p.eps);
        const A v = pool_value<A>(code == kMaxPool, xp, p.x.s[2], p.x.s[3], Window(ho, wo, p.stride, p.h, p.w), p.w);
        acc += wm * (v - mu) * is;
      } else if (!isfinite(wm)) {  // 'none': w * 0 is NaN for a NaN or inf weight, as in the reference
        acc += wm * A(0);
      }
    }
    plane(y, n, c)[ho * y.s[2] + wo * y.s[3]] = from_acc<T>(acc);
  }
}

// One block per (pool q, channel c): mean over (n, ho, wo) of w g and of
// w g xhat, the batch-statistics terms of the BatchNorm backward.
// bn_terms[q * C + c] and bn_terms[(P + q) * C + c].
template <typename T>
__global__ void __launch_bounds__(kChannelThreads)
    bn_terms_kernel(const FreeProblem<T> p, const acc_type<T>* __restrict__ stats, View4<const T> g,
                    acc_type<T>* __restrict__ terms) {
  using A = acc_type<T>;
  __shared__ SharedSlots<T> sh;
  __shared__ double red[kWarp];
  slots_to_shared(p, &sh);
  const int64_t hw = p.ho * p.wo, M = p.n * hw;
  const double Md = static_cast<double>(M);
  for (int64_t b = blockIdx.x; b < p.pools * p.c; b += gridDim.x) {
    const int q = static_cast<int>(b / p.c);
    const int64_t c = b % p.c;
    const int slot = sh.pool_slot[q];
    const bool mx = sh.slot[slot].code == kMaxPool;
    const A mu = stats[(q * 2) * p.c + c], is = invstd(stats, q, c, p.c, p.eps);
    double a = 0, bsum = 0;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      const int64_t n = j / hw, ho = (j % hw) / p.wo, wo = j % p.wo;
      const A v =
          pool_value<A>(mx, plane(p.x, n, c), p.x.s[2], p.x.s[3], Window(ho, wo, p.stride, p.h, p.w), p.w);
      const A gh = weight(p, n, slot) * to_acc(plane(g, n, c)[ho * g.s[2] + wo * g.s[3]]);
      a += gh;
      bsum += gh * (v - mu) * is;
    }
    a = block_sum(a, red);
    bsum = block_sum(bsum, red);
    if (threadIdx.x == 0) {
      terms[q * p.c + c] = static_cast<A>(a / Md);
      terms[(p.pools + q) * p.c + c] = static_cast<A>(bsum / Md);
    }
  }
}

// One block per (n, c) plane: the param slots' gradients and, per slot, the
// plane's dot of grad with the slot's output: partial[(n * C + c) * k + m].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    plane_kernel(const FreeProblem<T> p, const acc_type<T>* __restrict__ stats, const FreeGrads<T> gr,
                             double* __restrict__ partial) {
  using A = acc_type<T>;
  __shared__ SharedSlots<T> sh;
  __shared__ View4<T> sgs[kMaxOps];
  __shared__ double red[kWarp];
  if (threadIdx.x == 0) {
#pragma unroll
    for (int m = 0; m < kMaxOps; ++m) sgs[m] = gr.gslot[m];
  }
  slots_to_shared(p, &sh);  // synchronises
  const int64_t hw = p.ho * p.wo;
  const View4<const T>& g = gr.grad;
  for (int64_t pl = blockIdx.x; pl < p.n * p.c; pl += gridDim.x) {
    const int64_t n = pl / p.c, c = pl % p.c;
    const T* xp = plane(p.x, n, c);
    const T* gp = plane(g, n, c);
    for (int m = 0; m < p.k; ++m) {
      const int code = sh.slot[m].code;
      if (code == kNone) {
        if (threadIdx.x == 0) partial[pl * p.k + m] = 0;
        continue;
      }
      const A wm = weight(p, n, m);
      A dot = 0;
      if (code == kParam) {
        const View4<const T>& src = sh.slot[m].src;
        const View4<T>& dst = sgs[m];
        const T* sp = plane(src, n, c);
        T* dp = plane(dst, n, c);
        for (int64_t j = threadIdx.x; j < hw; j += blockDim.x) {
          const int64_t ho = j / p.wo, wo = j % p.wo;
          const A gi = to_acc(gp[ho * g.s[2] + wo * g.s[3]]);
          dp[ho * dst.s[2] + wo * dst.s[3]] = from_acc<T>(wm * gi);
          dot += gi * to_acc(sp[ho * src.s[2] + wo * src.s[3]]);
        }
      } else if (code == kIdentity) {  // stride 1: Ho, Wo = H, W
        for (int64_t j = threadIdx.x; j < hw; j += blockDim.x) {
          const int64_t h = j / p.wo, w = j % p.wo;
          dot += to_acc(gp[h * g.s[2] + w * g.s[3]]) * to_acc(xp[h * p.x.s[2] + w * p.x.s[3]]);
        }
      } else {
        const int q = sh.slot[m].pool;
        const bool mx = code == kMaxPool;
        const A mu = stats[(q * 2) * p.c + c], is = invstd(stats, q, c, p.c, p.eps);
        for (int64_t j = threadIdx.x; j < hw; j += blockDim.x) {
          const int64_t ho = j / p.wo, wo = j % p.wo;
          const A v = pool_value<A>(mx, xp, p.x.s[2], p.x.s[3], Window(ho, wo, p.stride, p.h, p.w), p.w);
          dot += to_acc(gp[ho * g.s[2] + wo * g.s[3]]) * ((v - mu) * is);
        }
      }
      const double total = block_sum(static_cast<double>(dot), red);
      if (threadIdx.x == 0) partial[pl * p.k + m] = total;
    }
  }
}

// One thread per input pixel (n, c, h, w): identity's w g, and for each pool
// slot the BatchNorm-and-pool backward of every window containing the pixel,
// in the CPU kernel's order (slots, then windows row-major).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    grad_x_kernel(const FreeProblem<T> p, const acc_type<T>* __restrict__ stats, bool stats_fixed,
                  const acc_type<T>* __restrict__ terms, View4<const T> g, View4<T> gx, bool gx_cl) {
  using A = acc_type<T>;
  __shared__ SharedSlots<T> sh;
  slots_to_shared(p, &sh);
  const int64_t total = p.n * p.c * p.h * p.w, s = p.stride;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, h, w;
    unflatten(i, p.c, p.h, p.w, gx_cl, &n, &c, &h, &w);
    const T* xp = plane(p.x, n, c);
    const T* gp = plane(g, n, c);
    // The output windows (ho, wo) whose [ho*s - 1, ho*s + 1] rows and columns hold (h, w).
    const int64_t ho0 = h == 0 ? 0 : (h - 1 + s - 1) / s, ho1 = min((h + 1) / s, p.ho - 1);
    const int64_t wo0 = w == 0 ? 0 : (w - 1 + s - 1) / s, wo1 = min((w + 1) / s, p.wo - 1);
    const int64_t self = h * p.w + w;
    A acc = 0;
    for (int m = 0; m < p.k; ++m) {
      const int code = sh.slot[m].code;
      if (code == kIdentity) {
        acc += weight(p, n, m) * to_acc(gp[h * g.s[2] + w * g.s[3]]);
      } else if (code == kMaxPool || code == kAvgPool) {
        const A wm = weight(p, n, m);
        const int q = sh.slot[m].pool;
        const bool mx = code == kMaxPool;
        const A mu = stats[(q * 2) * p.c + c], is = invstd(stats, q, c, p.c, p.eps);
        const A a = stats_fixed ? A(0) : terms[q * p.c + c];
        const A b = stats_fixed ? A(0) : terms[(p.pools + q) * p.c + c];
        for (int64_t ho = ho0; ho <= ho1; ++ho)
          for (int64_t wo = wo0; wo <= wo1; ++wo) {
            const Window win(ho, wo, s, p.h, p.w);
            const A gi = to_acc(gp[ho * g.s[2] + wo * g.s[3]]);
            if (mx) {
              int64_t arg;
              const A v = window_max<A>(xp, p.x.s[2], p.x.s[3], win, p.w, &arg);
              if (arg != self) continue;
              const A xhat = (v - mu) * is;
              acc += stats_fixed ? wm * gi * is : is * (wm * gi - a - xhat * b);
            } else {
              A dp;
              if (stats_fixed) {
                dp = wm * gi * is;
              } else {
                const A xhat = (window_avg<A>(xp, p.x.s[2], p.x.s[3], win) - mu) * is;
                dp = is * (wm * gi - a - xhat * b);
              }
              acc += dp / static_cast<A>(win.count());
            }
          }
      }
    }
    plane(gx, n, c)[h * gx.s[2] + w * gx.s[3]] = from_acc<T>(acc);
  }
}

inline int plane_threads(int64_t hw) {
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(kWarp, (hw + kWarp - 1) / kWarp * kWarp)));
}

}  // namespace

template <typename T>
cudaError_t mixed_op_free_batch_stats(const FreeProblem<T>& p, acc_type<T>* stats, cudaStream_t stream) {
  if (p.pools * p.c == 0 || p.n * p.ho * p.wo == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for(p.pools * p.c, kChannelThreads, &grid);
  if (err != cudaSuccess) return err;
  batch_stats_kernel<T><<<grid, kChannelThreads, 0, stream>>>(p, stats);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mixed_op_free_forward(const FreeProblem<T>& p, const acc_type<T>* stats, const View4<T>& y,
                                  bool y_channels_last, cudaStream_t stream) {
  const int64_t total = p.n * p.c * p.ho * p.wo;
  if (total == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err = grid_for((total + kThreads - 1) / kThreads, kThreads, &grid);
  if (err != cudaSuccess) return err;
  forward_kernel<T><<<grid, kThreads, 0, stream>>>(p, stats, y, y_channels_last);
  return cudaGetLastError();
}

template <typename T>
cudaError_t mixed_op_free_backward(const FreeProblem<T>& p, const acc_type<T>* stats, bool stats_fixed,
                                   const FreeGrads<T>& g, acc_type<T>* bn_terms, double* partial,
                                   cudaStream_t stream) {
  const int64_t planes = p.n * p.c, hw = p.ho * p.wo;
  if (planes * p.h * p.w == 0) return cudaSuccess;
  unsigned grid = 0;
  cudaError_t err;
  if (!stats_fixed && p.pools > 0) {
    err = grid_for(p.pools * p.c, kChannelThreads, &grid);
    if (err != cudaSuccess) return err;
    bn_terms_kernel<T><<<grid, kChannelThreads, 0, stream>>>(p, stats, g.grad, bn_terms);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const int threads = plane_threads(hw);
  err = grid_for(planes, threads, &grid);
  if (err != cudaSuccess) return err;
  plane_kernel<T><<<grid, threads, 0, stream>>>(p, stats, g, partial);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t pixels = planes * p.h * p.w;
  err = grid_for((pixels + kThreads - 1) / kThreads, kThreads, &grid);
  if (err != cudaSuccess) return err;
  grad_x_kernel<T><<<grid, kThreads, 0, stream>>>(p, stats, stats_fixed, bn_terms, g.grad, g.gx,
                                                   g.gx_channels_last);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // Per sample: row n sums its C planes; per edge: one row over all N * C.
  return p.per_sample ? reduce_partials<T>(partial, g.gw, p.n, p.c, p.k, stream)
                      : reduce_partials<T>(partial, g.gw, 1, planes, p.k, stream);
}

#define DARTSCC_INSTANTIATE(T)                                                                                  \
  template cudaError_t mixed_op_free_batch_stats<T>(const FreeProblem<T>&, acc_type<T>*, cudaStream_t);         \
  template cudaError_t mixed_op_free_forward<T>(const FreeProblem<T>&, const acc_type<T>*, const View4<T>&, bool, \
                                                cudaStream_t);                                                  \
  template cudaError_t mixed_op_free_backward<T>(const FreeProblem<T>&, const acc_type<T>*, bool,               \
                                                 const FreeGrads<T>&, acc_type<T>*, double*, cudaStream_t);
DARTSCC_INSTANTIATE(float)
DARTSCC_INSTANTIATE(double)
DARTSCC_INSTANTIATE(__half)
DARTSCC_INSTANTIATE(__nv_bfloat16)
#undef DARTSCC_INSTANTIATE

}  // namespace cuda
}  // namespace dartscc
