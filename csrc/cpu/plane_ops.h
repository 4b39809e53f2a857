// Per-plane building blocks of the CPU kernels: contiguous accumulation
// buffers, separable 3x3 pooling, and vectorisable scale-and-dot loops.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "isa.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dartscc {
namespace cpu {

// dst[h * W + w] = src[h * sh + w * sw]: gather any strided plane into a dense buffer.
template <typename acc_t, typename scalar_t>
DARTSCC_INLINE void load_plane(acc_t* __restrict dst, const scalar_t* __restrict src, int64_t H, int64_t W, int64_t sh,
                       int64_t sw) {
  if (sw == 1 && sh == W) {
    for (int64_t i = 0; i < H * W; ++i) dst[i] = static_cast<acc_t>(src[i]);
    return;
  }
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) dst[h * W + w] = static_cast<acc_t>(src[h * sh + w * sw]);
}

// The plane itself when it is dense and already of the accumulation type (no
// copy), else load_plane into `buf` and `buf`.
template <typename acc_t, typename scalar_t>
DARTSCC_INLINE const acc_t* plane_or_copy(acc_t* __restrict buf, const scalar_t* src, int64_t H, int64_t W, int64_t sh,
                                  int64_t sw) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (sw == 1 && sh == W) return src;
  }
  load_plane(buf, src, H, W, sh, sw);
  return buf;
}

// Where to accumulate an output plane: the plane itself when it is dense and of
// the accumulation type, else `buf` (then store_plane it).
template <typename acc_t, typename scalar_t>
DARTSCC_INLINE acc_t* plane_or_buffer(acc_t* buf, scalar_t* dst, int64_t H, int64_t W, int64_t sh, int64_t sw) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (sw == 1 && sh == W) return dst;
  }
  (void)H;
  return buf;
}

template <typename acc_t, typename scalar_t>
DARTSCC_INLINE void store_plane(scalar_t* __restrict dst, const acc_t* __restrict src, int64_t H, int64_t W, int64_t sh,
                        int64_t sw) {
  if (sw == 1 && sh == W) {
    for (int64_t i = 0; i < H * W; ++i) dst[i] = static_cast<scalar_t>(src[i]);
    return;
  }
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) dst[h * sh + w * sw] = static_cast<scalar_t>(src[h * W + w]);
}

// Ask for an H x W plane's cache lines before it is read. Loops that walk a
// channel sample by sample jump N*C*H*W apart, a fresh stream every few KB that
// the hardware prefetcher picks up late: prefetching the next sample's plane
// while this one is worked on hides that. Planes with sw != 1 (channels_last)
// interleave their channels and are left to the hardware.
// `for_write` asks for the lines in a writable state (an output plane).
template <typename T>
DARTSCC_INLINE void prefetch_plane(const T* p, int64_t H, int64_t W, int64_t sh, int64_t sw, bool for_write = false) {
  if (sw != 1) return;
  const int64_t rows = sh == W ? 1 : H, bytes = static_cast<int64_t>(sizeof(T)) * (sh == W ? H * W : W);
  for (int64_t h = 0; h < rows; ++h) {
    const char* r = reinterpret_cast<const char*>(p + h * sh);
    if (for_write) {
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b, 1);
    } else {
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(r + b);
    }
  }
}

// Mean and biased variance of `count` planes of m values each, from their means
// pm[i * stride] and sums of squared deviations pm2[i * stride], merged in plane
// order (Chan et al.): no one-pass cancellation, and the same result however the
// planes were split over threads.
DARTSCC_INLINE void merge_plane_stats(const double* pm, const double* pm2, int64_t stride, int64_t count, int64_t m,
                                      double& mean, double& var) {
  double cnt = 0, mu = 0, m2 = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double delta = pm[i * stride] - mu, tot = cnt + m;
    mu += delta * m / tot;
    m2 += pm2[i * stride] + delta * delta * cnt * m / tot;
    cnt = tot;
  }
  mean = mu;
  var = cnt > 0 ? m2 / cnt : 0.0;
}

// lanes[0] + ... + lanes[L-1] as a tree of halvings (vector adds; a chain of L
// scalar additions was most of a short dot product's time). The order is fixed.
template <typename acc_t, int L>
DARTSCC_INLINE acc_t reduce_lanes(acc_t* lanes) {
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

// Sum of a * b over n elements, in independent lanes so the compiler vectorises
// it without reassociating (no -ffast-math needed).
template <typename acc_t>
DARTSCC_INLINE acc_t dot(const acc_t* __restrict a, const acc_t* __restrict b, int64_t n) {
  constexpr int L = 16;
  acc_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) lanes[l] += a[i + l] * b[i + l];
  for (int64_t l = 0; i + l < n; ++l) lanes[l] += a[i + l] * b[i + l];
  return reduce_lanes<acc_t, L>(lanes);
}

template <typename acc_t>
DARTSCC_INLINE acc_t sum(const acc_t* __restrict a, int64_t n) {
  constexpr int L = 16;
  acc_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) lanes[l] += a[i + l];
  for (int64_t l = 0; i + l < n; ++l) lanes[l] += a[i + l];
  return reduce_lanes<acc_t, L>(lanes);
}

// Sum of (a - mu)^2, in independent lanes like dot().
template <typename acc_t>
DARTSCC_INLINE acc_t sq_dev_sum(const acc_t* __restrict a, acc_t mu, int64_t n) {
  constexpr int L = 16;
  acc_t lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) lanes[l] += (a[i + l] - mu) * (a[i + l] - mu);
  for (int64_t l = 0; i + l < n; ++l) lanes[l] += (a[i + l] - mu) * (a[i + l] - mu);
  return reduce_lanes<acc_t, L>(lanes);
}

// NaN-propagating max step: b replaces a when larger or NaN (torch's max_pool rule).
template <typename acc_t>
DARTSCC_INLINE bool takes(acc_t a, acc_t b) {
  return b > a || (b != b && a == a);
}

#if defined(__SSE2__)
// takes() on four lanes, as a mask.
DARTSCC_INLINE __m128 takes_mask(__m128 a, __m128 b) {
  return _mm_or_ps(_mm_cmpgt_ps(b, a), _mm_and_ps(_mm_cmpunord_ps(b, b), _mm_cmpord_ps(a, a)));
}

// The column step of the max pool with argmax, four outputs at a time: rows r,
// r + 1, r + 2 of the row pass (values r0..r2, row-argmax offsets at a0,
// a0 + Wo, a0 + 2 Wo) into out / arg. Returns how many outputs it did.
DARTSCC_INLINE int64_t max_rows_arg_sse(const float* __restrict r0, const float* __restrict r1, const float* __restrict r2,
                                const int32_t* __restrict a0, int64_t r, int64_t Wp, int64_t Wo, float* __restrict out,
                                int32_t* __restrict arg) {
  const __m128i b0 = _mm_set1_epi32(static_cast<int32_t>(r * Wp)), b1 = _mm_set1_epi32(static_cast<int32_t>((r + 1) * Wp)),
                b2 = _mm_set1_epi32(static_cast<int32_t>((r + 2) * Wp));
  int64_t wo = 0;
  for (; wo + 4 <= Wo; wo += 4) {
    __m128 m = _mm_loadu_ps(r0 + wo);
    __m128i a = _mm_add_epi32(b0, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a0 + wo)));
    const __m128 v1 = _mm_loadu_ps(r1 + wo), t1 = takes_mask(m, v1);
    const __m128i a1 = _mm_add_epi32(b1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a0 + Wo + wo)));
    m = _mm_or_ps(_mm_and_ps(t1, v1), _mm_andnot_ps(t1, m));
    a = _mm_or_si128(_mm_and_si128(_mm_castps_si128(t1), a1), _mm_andnot_si128(_mm_castps_si128(t1), a));
    const __m128 v2 = _mm_loadu_ps(r2 + wo), t2 = takes_mask(m, v2);
    const __m128i a2 = _mm_add_epi32(b2, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a0 + 2 * Wo + wo)));
    m = _mm_or_ps(_mm_and_ps(t2, v2), _mm_andnot_ps(t2, m));
    a = _mm_or_si128(_mm_and_si128(_mm_castps_si128(t2), a2), _mm_andnot_si128(_mm_castps_si128(t2), a));
    _mm_storeu_ps(out + wo, m);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(arg + wo), a);
  }
  return wo;
}
#endif

// Planes carry a one-element border (the 3x3 pools' padding): a dense H x W
// plane lives in an (H + 2) x (W + 2) buffer at offset W + 3.

// dst[0:n] = src[0:n] for the short rows of a plane: GCC turns a plain loop into
// a memmove call, whose overhead is most of the cost at 7-32 elements.
template <typename D, typename S>
DARTSCC_INLINE void copy_row(D* __restrict dst, const S* __restrict src, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<D, float> && std::is_same_v<S, float>) {
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_loadu_ps(src + i));
  }
#endif
  for (; i < n; ++i) dst[i] = static_cast<D>(src[i]);
}

template <typename acc_t, typename scalar_t>
DARTSCC_INLINE void load_padded(acc_t* __restrict dst, const scalar_t* __restrict src, int64_t H, int64_t W, int64_t sh,
                        int64_t sw) {
  const int64_t Wp = W + 2;
  for (int64_t h = 0; h < H; ++h) {
    acc_t* d = dst + (h + 1) * Wp + 1;
    const scalar_t* r = src + h * sh;
    if (sw == 1) {
      copy_row(d, r, W);
    } else {
      for (int64_t w = 0; w < W; ++w) d[w] = static_cast<acc_t>(r[w * sw]);
    }
  }
}

template <typename acc_t>
DARTSCC_INLINE void set_border(acc_t* x, int64_t H, int64_t W, acc_t v) {
  const int64_t Wp = W + 2;
  for (int64_t w = 0; w < Wp; ++w) x[w] = x[(H + 1) * Wp + w] = v;
  for (int64_t h = 1; h <= H; ++h) x[h * Wp] = x[h * Wp + W + 1] = v;
}

// 1 / (rows * cols) of each 3x3 window clipped to the plane: the
// count_include_pad=False divisor of the average pool.
template <typename acc_t>
DARTSCC_INLINE void avg_divisors(int64_t H, int64_t W, int64_t stride, int64_t Ho, int64_t Wo, acc_t* inv) {
  for (int64_t ho = 0; ho < Ho; ++ho) {
    const int64_t rows = std::min<int64_t>(ho * stride + 2, H) - std::max<int64_t>(ho * stride - 1, 0);
    for (int64_t wo = 0; wo < Wo; ++wo) {
      const int64_t cols = std::min<int64_t>(wo * stride + 2, W) - std::max<int64_t>(wo * stride - 1, 0);
      inv[ho * Wo + wo] = acc_t(1) / static_cast<acc_t>(rows * cols);
    }
  }
}

// Separable 3x3 pooling (padding 1) of a padded plane `xp` into the dense
// Ho x Wo `out`: a row pass then a column pass, branch-free so both vectorise.
// Max pooling pads with -inf; `arg` (if not null) gets, per output, the padded
// offset of the first maximum in row-major scan order (the row pass keeps each
// row's first maximum, the column pass the first row holding the overall one).
// Average pooling pads with 0 and scales by `inv` (avg_divisors).
// Scratch: `row` and `row_arg` of (H + 2) * Wo.
// The stride is a template parameter so the strided loads vectorise.
template <int stride, typename acc_t>
DARTSCC_INLINE void pool_plane_s(bool is_max, acc_t* __restrict xp, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                  acc_t* __restrict out, int32_t* __restrict arg, const acc_t* __restrict inv, acc_t* __restrict row,
                  int32_t* __restrict row_arg) {
  const int64_t Wp = W + 2, Hp = H + 2;
  set_border(xp, H, W, is_max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
  for (int64_t r = 0; r < Hp; ++r) {
    const acc_t* __restrict x = xp + r * Wp;
    acc_t* __restrict rr = row + r * Wo;
    int32_t* __restrict ra = row_arg + r * Wo;
    if (is_max && !arg) {
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const int64_t c = wo * stride;
        acc_t m = x[c];
        m = takes(m, x[c + 1]) ? x[c + 1] : m;
        m = takes(m, x[c + 2]) ? x[c + 2] : m;
        rr[wo] = m;
      }
    } else if (is_max) {
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const int64_t c = wo * stride;
        acc_t m = x[c];
        int32_t a = static_cast<int32_t>(c);
        const acc_t b1 = x[c + 1], b2 = x[c + 2];
        const bool t1 = takes(m, b1);
        m = t1 ? b1 : m;
        a = t1 ? static_cast<int32_t>(c + 1) : a;
        const bool t2 = takes(m, b2);
        m = t2 ? b2 : m;
        a = t2 ? static_cast<int32_t>(c + 2) : a;
        rr[wo] = m;
        ra[wo] = a == 0 ? 1 : a;  // the left pad wins only an all -inf window: torch points at its first pixel
      }
    } else {
      for (int64_t wo = 0; wo < Wo; ++wo) {
        const int64_t c = wo * stride;
        rr[wo] = x[c] + x[c + 1] + x[c + 2];
      }
    }
  }
  for (int64_t ho = 0; ho < Ho; ++ho) {
    const int64_t r = ho * stride;
    const acc_t* __restrict r0 = row + r * Wo;
    const acc_t* __restrict r1 = r0 + Wo;
    const acc_t* __restrict r2 = r1 + Wo;
    acc_t* __restrict o = out + ho * Wo;
    if (is_max) {
      if (arg) {
        const int32_t* __restrict a0 = row_arg + r * Wo;
        int32_t* __restrict ao = arg + ho * Wo;
        int64_t wo = 0;
#if defined(__SSE2__)
        // GCC does not if-convert this loop (NaN rule plus index select): by hand for float.
        if constexpr (std::is_same_v<acc_t, float>) wo = max_rows_arg_sse(r0, r1, r2, a0, r, Wp, Wo, o, ao);
#endif
        for (; wo < Wo; ++wo) {
          acc_t m = r0[wo];
          int32_t a = static_cast<int32_t>(r * Wp) + a0[wo];
          const bool t1 = takes(m, r1[wo]);
          m = t1 ? r1[wo] : m;
          a = t1 ? static_cast<int32_t>((r + 1) * Wp) + a0[wo + Wo] : a;
          const bool t2 = takes(m, r2[wo]);
          m = t2 ? r2[wo] : m;
          a = t2 ? static_cast<int32_t>((r + 2) * Wp) + a0[wo + 2 * Wo] : a;
          o[wo] = m;
          ao[wo] = a;
        }
        // likewise the top pad row (offsets below Wp): an all -inf window's argmax is its first real pixel
        if (r == 0)
          for (int64_t w = 0; w < Wo; ++w) ao[w] = ao[w] < Wp ? static_cast<int32_t>(Wp) + a0[w + Wo] : ao[w];
      } else {
        for (int64_t wo = 0; wo < Wo; ++wo) {
          acc_t m = r0[wo];
          m = takes(m, r1[wo]) ? r1[wo] : m;
          m = takes(m, r2[wo]) ? r2[wo] : m;
          o[wo] = m;
        }
      }
    } else {
      const acc_t* __restrict iv = inv + ho * Wo;
      for (int64_t wo = 0; wo < Wo; ++wo) o[wo] = (r0[wo] + r1[wo] + r2[wo]) * iv[wo];
    }
  }
}

template <typename acc_t>
DARTSCC_INLINE void pool_plane(bool is_max, acc_t* xp, int64_t H, int64_t W, int64_t stride, int64_t Ho, int64_t Wo, acc_t* out,
                int32_t* arg, const acc_t* inv, acc_t* row, int32_t* row_arg) {
  if (stride == 1)
    pool_plane_s<1>(is_max, xp, H, W, Ho, Wo, out, arg, inv, row, row_arg);
  else
    pool_plane_s<2>(is_max, xp, H, W, Ho, Wo, out, arg, inv, row, row_arg);
}

// gxp (padded) += the 3x3 average-pool backward of dp, whose divisors are
// `inv`: separable, rows first (into `rows`, (H + 2) x Wo, zeroed here), then columns.
template <int stride, typename acc_t>
DARTSCC_INLINE void avg_pool_backward_s(const acc_t* __restrict dp, const acc_t* __restrict inv, int64_t H, int64_t W, int64_t Ho,
                         int64_t Wo, acc_t* __restrict gxp, acc_t* __restrict rows) {
  const int64_t Wp = W + 2;
  std::fill(rows, rows + (H + 2) * Wo, acc_t(0));
  for (int64_t ho = 0; ho < Ho; ++ho) {
    const acc_t* __restrict d = dp + ho * Wo;
    const acc_t* __restrict iv = inv + ho * Wo;
    for (int64_t dr = 0; dr < 3; ++dr) {
      acc_t* __restrict r = rows + (ho * stride + dr) * Wo;
      for (int64_t wo = 0; wo < Wo; ++wo) r[wo] += d[wo] * iv[wo];
    }
  }
  for (int64_t h = 0; h < H + 2; ++h) {
    const acc_t* __restrict r = rows + h * Wo;
    acc_t* __restrict g = gxp + h * Wp;
    for (int64_t dc = 0; dc < 3; ++dc)
      for (int64_t wo = 0; wo < Wo; ++wo) g[wo * stride + dc] += r[wo];
  }
}

template <typename acc_t>
DARTSCC_INLINE void avg_pool_backward(const acc_t* dp, const acc_t* inv, int64_t H, int64_t W, int64_t stride, int64_t Ho,
                       int64_t Wo, acc_t* gxp, acc_t* rows) {
  if (stride == 1)
    avg_pool_backward_s<1>(dp, inv, H, W, Ho, Wo, gxp, rows);
  else
    avg_pool_backward_s<2>(dp, inv, H, W, Ho, Wo, gxp, rows);
}

}  // namespace cpu
}  // namespace dartscc
