// CPU kernels of relu_dw_pw_conv (schema and semantics: ../relu_dw_pw_conv.cpp).
//
// One sample per task; everything per sample stays in per-thread scratch (L2).
//
// Depthwise: the ReLU'd input of each channel is written, zero-padded, into
// stride x stride "phase planes" (phase (py, px) holds padded pixels
// (S u + py, S v + px)), all with row stride wq. Then every tap of the K x K
// kernel is one constant offset into one phase plane, and the depthwise output
// over the flattened "wide" index q = i * wq + j (columns j >= W_out are
// scratch) is a sum of K*K shifted plane reads: long, branch-free,
// register-blocked vector loops whatever the plane size (7x7 planes included).
// The backward's transposed depthwise convolution is the same loop reading the
// wide output gradient (zero in the scratch columns and margins) at negated
// offsets, one phase plane at a time.
//
// Pointwise: small register-blocked GEMMs over the compact [C, H_out * W_out]
// block (y = W t, the weight gradient g t^T, and the transposed W^T g).
//
// The weight gradients are summed per sample and then over samples in a fixed
// order, so no result depends on the thread count. The hot loops are compiled
// twice, for the baseline ISA and (x86-64) for AVX2+FMA, picked at run time;
// DARTSCC_CPU_ISA=baseline forces the former.
#pragma GCC optimize("fp-contract=fast")
#pragma GCC diagnostic ignored "-Wpsabi"
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "isa.h"

namespace dartscc {
namespace {

// 32-byte vectors (8 floats, 4 doubles): one AVX register, or two SSE ones.
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using V = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
DARTSCC_INLINE V<T> loadu(const T* p) {
  V<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
DARTSCC_INLINE void storeu(T* p, const V<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
DARTSCC_INLINE V<T> splat(T x) {
  return V<T>{} + x;
}
template <typename T>
DARTSCC_INLINE T hsum(const V<T>& v) {
  T s = T(0);
  for (int64_t l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

constexpr int64_t kSlack = 64;  // elements past every buffer's end that vector loops may touch

// The geometry of one sample.
struct Geometry {
  int64_t S, D, K, pad;
  int64_t hq, wq;   // phase-plane rows and row stride
  int64_t plane;    // phase-plane size, with a row and kSlack of zero margin
  int64_t lout;     // wide output length ho * wq
  int64_t P, Pp;    // compact output plane, and it rounded up to 2 vectors
  int64_t margin;   // zeros in front of the wide output gradient
  std::vector<int64_t> tap_phase, tap_off;  // per tap: phase plane and offset (ay * wq + bx)
  explicit Geometry(const DwPwShape& s, int64_t lanes) : S(s.stride), D(s.dilation), K(s.k), pad(s.pad) {
    hq = (s.hp + S - 1) / S;
    wq = (s.wp + S - 1) / S;
    plane = (hq + 1) * wq + kSlack;
    lout = s.ho * wq;
    P = s.ho * s.wo;
    Pp = (P + 2 * lanes - 1) / (2 * lanes) * (2 * lanes);
    for (int64_t a = 0; a < K; ++a)
      for (int64_t b = 0; b < K; ++b) {
        tap_phase.push_back(((a * D) % S) * S + (b * D) % S);
        tap_off.push_back((a * D / S) * wq + b * D / S);
      }
    margin = tap_off.back() + kSlack;
  }
};

// Stride 2: input row x (W columns) <-> its two phase rows: padded column
// w + pad is phase (w + pad) & 1, column (w + pad) >> 1. One contiguous pass
// over the input row, column pairs at a time (stride-2 loops per phase were
// scattered scalar stores, and integer divisions per row, most of the stride-2
// backward's time). relu_to_phases writes relu(x) (NaN stays NaN);
// masked_from_phases writes gx = x > 0 ? phase value : 0.
template <typename T>
DARTSCC_INLINE void relu_to_phases(T* __restrict r0, T* __restrict r1, const T* __restrict x, int64_t W,
                                   int64_t pad) {
  int64_t w = 0;
  if (pad & 1) {  // column 0 is phase 1
    r1[pad >> 1] = x[0] <= T(0) ? T(0) : x[0];
    w = 1;
  }
  const int64_t base = (w + pad) >> 1;
  const int64_t pairs = (W - w) / 2;
  const T* __restrict xw = x + w;
  T* __restrict a = r0 + base;
  T* __restrict b = r1 + base;
  for (int64_t j = 0; j < pairs; ++j) {
    const T e = xw[2 * j], o = xw[2 * j + 1];
    a[j] = e <= T(0) ? T(0) : e;
    b[j] = o <= T(0) ? T(0) : o;
  }
  w += 2 * pairs;
  if (w < W) r0[(w + pad) >> 1] = x[w] <= T(0) ? T(0) : x[w];
}

template <typename T>
DARTSCC_INLINE void masked_from_phases(T* __restrict gx, const T* __restrict x, const T* __restrict r0,
                                       const T* __restrict r1, int64_t W, int64_t pad) {
  int64_t w = 0;
  if (pad & 1) {
    gx[0] = x[0] > T(0) ? r1[pad >> 1] : T(0);
    w = 1;
  }
  const int64_t base = (w + pad) >> 1;
  const int64_t pairs = (W - w) / 2;
  const T* __restrict xw = x + w;
  T* __restrict gw = gx + w;
  const T* __restrict a = r0 + base;
  const T* __restrict b = r1 + base;
  for (int64_t j = 0; j < pairs; ++j) {
    gw[2 * j] = xw[2 * j] > T(0) ? a[j] : T(0);
    gw[2 * j + 1] = xw[2 * j + 1] > T(0) ? b[j] : T(0);
  }
  w += 2 * pairs;
  if (w < W) gx[w] = x[w] > T(0) ? r0[(w + pad) >> 1] : T(0);
}

// Phase planes of relu(x_c), zero-padded (pad) and with zero margins.
template <typename T>
DARTSCC_INLINE void fill_phases(T* __restrict r, const T* __restrict x, const DwPwShape& s, const Geometry& g) {
  std::fill(r, r + g.S * g.S * g.plane, T(0));
  if (g.S == 1) {
    for (int64_t h = 0; h < s.h; ++h) {
      T* __restrict row = r + (h + g.pad) * g.wq + g.pad;
      const T* __restrict xr = x + h * s.w;
      for (int64_t w = 0; w < s.w; ++w) row[w] = xr[w] <= T(0) ? T(0) : xr[w];  // NaN stays NaN
    }
    return;
  }
  for (int64_t h = 0; h < s.h; ++h) {
    const int64_t hp = h + g.pad, py = hp & 1, u = hp >> 1;
    T* row0 = r + (py * 2) * g.plane + u * g.wq;
    relu_to_phases(row0, row0 + g.plane, x + h * s.w, s.w, g.pad);
  }
}

// out[q] = sum over taps t of w[t] * src[t][q + sign * off[t]], q < len (rounded up to 4 vectors;
// out must have room). The depthwise forward (sign +1, src = phase planes) and,
// restricted to the taps of one phase, its transpose (sign -1, src = the wide gradient).
template <typename T>
DARTSCC_INLINE void shifted_sum(T* __restrict out, int64_t len, const T* const* src, const int64_t* off,
                                const T* w, int64_t taps) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t q = 0; q < len; q += 4 * L) {
    V<T> a0{}, a1{}, a2{}, a3{};
    for (int64_t t = 0; t < taps; ++t) {
      const V<T> wv = splat(w[t]);
      const T* p = src[t] + off[t] + q;
      a0 += wv * loadu(p);
      a1 += wv * loadu(p + L);
      a2 += wv * loadu(p + 2 * L);
      a3 += wv * loadu(p + 3 * L);
    }
    storeu(out + q, a0);
    storeu(out + q + L, a1);
    storeu(out + q + 2 * L, a2);
    storeu(out + q + 3 * L, a3);
  }
}

// y[o, p] = sum_i w[o * wso + i * wsi] * t[i * tstride + p], o < rows_out, p < P;
// t rows hold Pp >= P elements (2-vector blocks), y rows have stride ystride.
template <typename T>
DARTSCC_INLINE void gemm_rows(T* __restrict y, int64_t ystride, const T* __restrict t, int64_t tstride,
                              const T* __restrict w, int64_t wso, int64_t wsi, int64_t rows_out, int64_t rows_in,
                              int64_t P) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t p = 0; p < P; p += 2 * L) {
    const bool full = p + 2 * L <= P;
    for (int64_t o0 = 0; o0 < rows_out; o0 += 4) {
      const int64_t nr = std::min<int64_t>(4, rows_out - o0);
      V<T> acc[4][2] = {};
      for (int64_t i = 0; i < rows_in; ++i) {
        const V<T> t0 = loadu(t + i * tstride + p), t1 = loadu(t + i * tstride + p + L);
        for (int64_t r = 0; r < 4; ++r) {
          if (r < nr) {
            const V<T> wv = splat(w[(o0 + r) * wso + i * wsi]);
            acc[r][0] += wv * t0;
            acc[r][1] += wv * t1;
          }
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        T* yr = y + (o0 + r) * ystride + p;
        if (full) {
          storeu(yr, acc[r][0]);
          storeu(yr + L, acc[r][1]);
        } else {
          T tmp[2 * L];
          storeu(tmp, acc[r][0]);
          storeu(tmp + L, acc[r][1]);
          std::memcpy(yr, tmp, sizeof(T) * (P - p));
        }
      }
    }
  }
}

// gw[o, i] = <g[o], t[i]> over P (t rows zero past P; g rows read as given then masked).
template <typename T>
DARTSCC_INLINE void gemm_nt(T* __restrict gw, const T* __restrict g, int64_t gstride, const T* __restrict t,
                            int64_t tstride, int64_t rows_g, int64_t rows_t, int64_t P) {
  constexpr int64_t L = kLanes<T>;
  const int64_t Pv = P / L * L;
  for (int64_t o0 = 0; o0 < rows_g; o0 += 2) {
    const int64_t no = std::min<int64_t>(2, rows_g - o0);
    for (int64_t i0 = 0; i0 < rows_t; i0 += 4) {
      const int64_t ni = std::min<int64_t>(4, rows_t - i0);
      V<T> acc[2][4] = {};
      for (int64_t p = 0; p < Pv; p += L) {
        V<T> gv[2], tv[4];
        for (int64_t r = 0; r < 2; ++r) gv[r] = loadu(g + (o0 + (r < no ? r : 0)) * gstride + p);
        for (int64_t c = 0; c < 4; ++c) tv[c] = loadu(t + (i0 + (c < ni ? c : 0)) * tstride + p);
        for (int64_t r = 0; r < 2; ++r)
          for (int64_t c = 0; c < 4; ++c) acc[r][c] += gv[r] * tv[c];
      }
      for (int64_t r = 0; r < no; ++r)
        for (int64_t c = 0; c < ni; ++c) {
          T v = hsum<T>(acc[r][c]);
          const T* gr = g + (o0 + r) * gstride;
          const T* tr = t + (i0 + c) * tstride;
          for (int64_t p = Pv; p < P; ++p) v += gr[p] * tr[p];
          gw[(o0 + r) * rows_t + i0 + c] = v;
        }
    }
  }
}

// out[j] = <gwide, tap k0 + j's phase plane at its offset> over the wide output, j < n <= NT:
// NT register accumulators, one pass over gwide. Taps j >= n repeat tap k0 (not stored).
template <typename T, int NT>
DARTSCC_INLINE void tap_dots(T* out, const T* __restrict gwide, const T* r, const Geometry& g, int64_t k0,
                             int64_t lout, int64_t n = NT) {
  constexpr int64_t L = kLanes<T>;
  const T* src[NT];
  for (int64_t j = 0; j < NT; ++j) {
    const int64_t k = k0 + (j < n ? j : 0);
    src[j] = r + g.tap_phase[k] * g.plane + g.tap_off[k];
  }
  V<T> acc[NT] = {};
  for (int64_t q = 0; q < lout; q += L) {
    const V<T> gv = loadu(gwide + q);
    for (int64_t j = 0; j < NT; ++j) acc[j] += gv * loadu(src[j] + q);
  }
  for (int64_t j = 0; j < n; ++j) out[j] = hsum<T>(acc[j]);
}

constexpr int64_t kSmallPlane = 256;  // below this many output pixels, the weight gradient goes through t^T
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename T>
struct Scratch {
  std::vector<T> r, tw, t, gt, gtw, gr, tt;
  Scratch(const DwPwShape& s, const Geometry& g, bool backward)
      : r((backward ? s.c : 1) * g.S * g.S * g.plane),
        tw(g.lout + 4 * kSlack),
        t(std::max<int64_t>(s.c, 1) * g.Pp) {
    if (backward) {
      gt.resize(std::max<int64_t>(s.c, 1) * g.Pp);
      gtw.resize(g.margin + g.hq * g.wq + g.wq + 4 * kSlack);
      gr.resize(g.S * g.S * g.plane + 4 * kSlack);
      if (g.P < kSmallPlane) tt.resize(g.P * round_up(s.c, 2 * kLanes<T>));
    }
  }
};

// Depthwise output of channel c (phase planes at r) into the compact row t (Pp, zero tail).
template <typename T>
DARTSCC_INLINE void depthwise(T* __restrict t, T* __restrict wide, const T* r, const T* w, const DwPwShape& s,
                              const Geometry& g) {
  const int64_t taps = g.K * g.K;
  const T* src[64];
  for (int64_t k = 0; k < taps; ++k) src[k] = r + g.tap_phase[k] * g.plane;
  shifted_sum(wide, g.lout, src, g.tap_off.data(), w, taps);
  for (int64_t i = 0; i < s.ho; ++i) std::memcpy(t + i * s.wo, wide + i * g.wq, sizeof(T) * s.wo);
  std::fill(t + g.P, t + g.Pp, T(0));
}

template <typename T>
DARTSCC_INLINE void forward_body(const DwPwShape& s, const T* x, const T* dw, const T* pw, T* y, int64_t begin,
                                 int64_t end) {
  const Geometry g(s, kLanes<T>);
  Scratch<T> b(s, g, false);
  const int64_t KK = s.k * s.k;
  for (int64_t n = begin; n < end; ++n) {
    for (int64_t c = 0; c < s.c; ++c) {
      fill_phases(b.r.data(), x + (n * s.c + c) * s.h * s.w, s, g);
      depthwise(b.t.data() + c * g.Pp, b.tw.data(), b.r.data(), dw + c * KK, s, g);
    }
    gemm_rows(y + n * s.co * g.P, g.P, b.t.data(), g.Pp, pw, s.c, 1, s.co, s.c, g.P);
  }
}

// Per sample n: gx[n], and the weight-gradient partials gpw_part[n] [C_out, C]
// and gdw_part[n] [C, K, K].
template <typename T>
DARTSCC_INLINE void backward_body(const DwPwShape& s, const T* grad, const T* x, const T* dw, const T* pw, T* gx,
                                  T* gdw_part, T* gpw_part, int64_t begin, int64_t end) {
  constexpr int64_t L = kLanes<T>;
  const Geometry g(s, L);
  Scratch<T> b(s, g, true);
  const int64_t KK = s.k * s.k, S2 = g.S * g.S, rsize = S2 * g.plane;
  // Per phase: its taps' weights index and their (negated) offsets.
  std::vector<std::vector<int64_t>> phase_taps(S2);
  for (int64_t k = 0; k < KK; ++k) phase_taps[g.tap_phase[k]].push_back(k);
  std::vector<T> gpad;
  for (int64_t n = begin; n < end; ++n) {
    const T* gn = grad + n * s.co * g.P;
    for (int64_t c = 0; c < s.c; ++c) {
      T* rc = b.r.data() + c * rsize;
      fill_phases(rc, x + (n * s.c + c) * s.h * s.w, s, g);
      depthwise(b.t.data() + c * g.Pp, b.tw.data(), rc, dw + c * KK, s, g);
    }
    if (g.P < kSmallPlane) {
      // Small planes: gpw = g t^T as gemm_rows over t^T [P, C] (no per-element horizontal sums).
      const int64_t cp = round_up(s.c, 2 * L);
      for (int64_t p = 0; p < g.P; ++p) {
        T* row = b.tt.data() + p * cp;
        for (int64_t c = 0; c < s.c; ++c) row[c] = b.t[c * g.Pp + p];
        std::fill(row + s.c, row + cp, T(0));
      }
      gemm_rows(gpw_part + n * s.co * s.c, s.c, b.tt.data(), cp, gn, g.P, 1, s.co, g.P, s.c);
    } else {
      gemm_nt(gpw_part + n * s.co * s.c, gn, g.P, b.t.data(), g.Pp, s.co, s.c, g.P);
    }
    // gt = pw^T g, compact; its rows need Pp readable elements of g: gemm_rows reads
    // g rows in 2-vector blocks, so copy the sample's gradient rows when P is ragged.
    const T* gsrc = gn;
    int64_t gstride = g.P;
    if (g.P != g.Pp) {
      gpad.assign(s.co * g.Pp, T(0));
      for (int64_t o = 0; o < s.co; ++o) std::memcpy(gpad.data() + o * g.Pp, gn + o * g.P, sizeof(T) * g.P);
      gsrc = gpad.data();
      gstride = g.Pp;
    }
    gemm_rows(b.gt.data(), g.Pp, gsrc, gstride, pw, 1, s.c, s.c, s.co, g.P);
    for (int64_t c = 0; c < s.c; ++c) {
      const T* rc = b.r.data() + c * rsize;
      const T* wc = dw + c * KK;
      // The wide output gradient: zero margins and zero scratch columns.
      T* gw = b.gtw.data();
      std::fill(b.gtw.begin(), b.gtw.end(), T(0));
      for (int64_t i = 0; i < s.ho; ++i)
        std::memcpy(gw + g.margin + i * g.wq, b.gt.data() + c * g.Pp + i * s.wo, sizeof(T) * s.wo);
      const T* gwide = gw + g.margin;
      // gdw[k] = <gwide, phase plane at off[k]> over the wide output.
      T* gdw = gdw_part + (n * s.c + c) * KK;
      if (KK == 9) {
        tap_dots<T, 9>(gdw, gwide, rc, g, 0, g.lout);  // 3x3: all taps in one pass
      } else {
        for (int64_t k0 = 0; k0 < KK; k0 += 4) {
          const int64_t nk = std::min<int64_t>(4, KK - k0);
          T tmp[4];
          tap_dots<T, 4>(tmp, gwide, rc, g, k0, g.lout, nk);
          for (int64_t j = 0; j < nk; ++j) gdw[k0 + j] = tmp[j];
        }
      }
      // Transposed depthwise: each phase plane of the input gradient.
      for (int64_t ph = 0; ph < S2; ++ph) {
        const auto& ks = phase_taps[ph];
        T* out = b.gr.data() + ph * g.plane;
        if (ks.empty()) continue;
        const T* src[64];
        int64_t off[64];
        T wt[64];
        for (size_t j = 0; j < ks.size(); ++j) {
          src[j] = gwide;
          off[j] = -g.tap_off[ks[j]];
          wt[j] = wc[ks[j]];
        }
        shifted_sum(out, g.hq * g.wq, src, off, wt, static_cast<int64_t>(ks.size()));
      }
      // gx = relu'(x) * the unpadded input gradient.
      const T* __restrict xc = x + (n * s.c + c) * s.h * s.w;
      T* __restrict gxc = gx + (n * s.c + c) * s.h * s.w;
      for (int64_t h = 0; h < s.h; ++h) {
        const T* __restrict xr = xc + h * s.w;
        T* __restrict gr = gxc + h * s.w;
        if (g.S == 1) {
          const T* __restrict src = b.gr.data() + (h + g.pad) * g.wq + g.pad;
          for (int64_t w = 0; w < s.w; ++w) gr[w] = xr[w] > T(0) ? src[w] : T(0);
        } else {
          const int64_t hp = h + g.pad, py = hp & 1, u = hp >> 1;
          const T* src0 = b.gr.data() + (py * 2) * g.plane + u * g.wq;
          masked_from_phases(gr, xr, src0, src0 + g.plane, s.w, g.pad);
        }
      }
    }
  }
}

void check_cpu_shape(const char* op, const DwPwShape& s) {
  TORCH_CHECK(s.stride <= 2, op, ": the CPU kernel supports stride 1 or 2, got ", s.stride);
  TORCH_CHECK(s.k * s.k <= 64, op, ": the CPU kernel supports kernel sizes up to 7, got ", s.k);
}

at::Tensor relu_dw_pw_conv_cpu(const at::Tensor& x_, const at::Tensor& dw_, const at::Tensor& pw_, int64_t stride,
                               int64_t dilation) {
  const char* op = "relu_dw_pw_conv";
  const DwPwShape s = check_relu_dw_pw_conv(op, x_, dw_, pw_, stride, dilation);
  check_cpu_shape(op, s);
  const at::Tensor x = x_.contiguous(), dw = dw_.contiguous(), pw = pw_.contiguous();
  at::Tensor y = at::empty({s.n, s.co, s.ho, s.wo}, x.options());
  if (y.numel() == 0) return y;
  if (s.c == 0) return y.zero_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_dw_pw_conv_cpu", [&] {
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pdw = dw.const_data_ptr<scalar_t>(),
                   *ppw = pw.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    // forward_body compiled for AVX2 or the baseline (isa.h)
    cpu::parallel_isa(s.n, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      forward_body<scalar_t>(s, px, pdw, ppw, py, begin, end);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relu_dw_pw_conv_backward_cpu(const at::Tensor& grad_,
                                                                            const at::Tensor& x_,
                                                                            const at::Tensor& dw_,
                                                                            const at::Tensor& pw_, int64_t stride,
                                                                            int64_t dilation) {
  const char* op = "relu_dw_pw_conv_backward";
  const DwPwShape s = check_relu_dw_pw_conv(op, x_, dw_, pw_, stride, dilation);
  check_cpu_shape(op, s);
  check_grad(op, grad_, {s.n, s.co, s.ho, s.wo}, x_);
  const at::Tensor g = grad_.contiguous(), x = x_.contiguous(), dw = dw_.contiguous(), pw = pw_.contiguous();
  at::Tensor gdw = at::zeros_like(dw), gpw = at::zeros_like(pw);
  if (s.n == 0 || s.c == 0 || s.ho == 0 || s.wo == 0)
    return {at::zeros_like(x, at::MemoryFormat::Contiguous), gdw, gpw};
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);  // every element is written
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_dw_pw_conv_backward_cpu", [&] {
    const int64_t KK = s.k * s.k;
    std::vector<scalar_t> gdw_part(s.n * s.c * KK), gpw_part(s.n * s.co * s.c);
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *px = x.const_data_ptr<scalar_t>(),
                   *pdw = dw.const_data_ptr<scalar_t>(), *ppw = pw.const_data_ptr<scalar_t>();
    scalar_t* pgx = gx.mutable_data_ptr<scalar_t>();
    cpu::parallel_isa(s.n, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      backward_body<scalar_t>(s, pg, px, pdw, ppw, pgx, gdw_part.data(), gpw_part.data(), begin, end);
    });
    // Over samples in a fixed order, in double.
    auto reduce = [&](const std::vector<scalar_t>& part, at::Tensor& out, int64_t len) {
      std::vector<double> acc(len, 0.0);
      for (int64_t n = 0; n < s.n; ++n)
        for (int64_t i = 0; i < len; ++i) acc[i] += static_cast<double>(part[n * len + i]);
      scalar_t* po = out.mutable_data_ptr<scalar_t>();
      for (int64_t i = 0; i < len; ++i) po[i] = static_cast<scalar_t>(acc[i]);
    };
    reduce(gdw_part, gdw, s.c * KK);
    reduce(gpw_part, gpw, s.co * s.c);
  });
  return {gx, gdw, gpw};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("relu_dw_pw_conv", &relu_dw_pw_conv_cpu);
  m.impl("relu_dw_pw_conv_backward", &relu_dw_pw_conv_backward_cpu);
}

}  // namespace dartscc
