#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/primitives.h"
#include "../mixed_op_free.h"

namespace dartscc {
namespace {

// A 4-D strided view; every tensor keeps its own layout (NCHW or NHWC).
template <typename T>
struct View4 {
  T* p;
  int64_t s0, s1, s2, s3;
  View4(T* ptr, const at::Tensor& t) : p(ptr), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  T* plane(int64_t n, int64_t c) const { return p + n * s0 + c * s1; }
};

// The 3x3, padding-1 pooling window of output pixel (ho, wo), clipped to the input.
struct Window {
  int64_t h0, h1, w0, w1;
  Window(int64_t ho, int64_t wo, int64_t stride, int64_t H, int64_t W) {
    h0 = std::max<int64_t>(ho * stride - 1, 0);
    h1 = std::min<int64_t>(ho * stride + 2, H);
    w0 = std::max<int64_t>(wo * stride - 1, 0);
    w1 = std::min<int64_t>(wo * stride + 2, W);
  }
  int64_t count() const { return (h1 - h0) * (w1 - w0); }
};

// Max over the window; `arg` gets the offset (h * W + w) of the first maximum in
// scan order, NaN winning, as torch's max_pool2d picks it.
template <typename acc_t, typename scalar_t>
inline acc_t window_max(const scalar_t* xp, int64_t sh, int64_t sw, const Window& win, int64_t W, int64_t* arg) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int64_t where = win.h0 * W + win.w0;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const acc_t v = static_cast<acc_t>(xp[h * sh + w * sw]);
      if (v > best || std::isnan(v)) {
        best = v;
        where = h * W + w;
        if (std::isnan(v)) { *arg = where; return v; }
      }
    }
  *arg = where;
  return best;
}

template <typename acc_t, typename scalar_t>
inline acc_t window_avg(const scalar_t* xp, int64_t sh, int64_t sw, const Window& win) {
  acc_t sum = 0;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) sum += static_cast<acc_t>(xp[h * sh + w * sw]);
  return sum / static_cast<acc_t>(win.count());
}

template <typename acc_t, typename scalar_t>
inline acc_t pool_value(bool is_max, const scalar_t* xp, int64_t sh, int64_t sw, const Window& win, int64_t W) {
  int64_t arg;
  return is_max ? window_max<acc_t>(xp, sh, sw, win, W, &arg) : window_avg<acc_t>(xp, sh, sw, win);
}

template <typename scalar_t>
struct Problem {
  using acc_t = at::opmath_type<scalar_t>;
  const FreeShape& s;
  at::IntArrayRef prims;
  View4<const scalar_t> x;
  std::vector<View4<const scalar_t>> params;  // by param index
  const scalar_t* w;

  acc_t weight(int64_t n, int64_t m) const { return static_cast<acc_t>(w[(s.per_sample ? n * s.k : 0) + m]); }
  bool is_max(size_t p) const { return prims[s.pool_slots[p]] == kMaxPool; }

  // Batch mean and biased variance of each pool slot's output, per channel.
  // Shifted by the first value so the one-pass variance does not cancel.
  void batch_stats(std::vector<acc_t>& mean, std::vector<acc_t>& var) const {
    const size_t P = s.pool_slots.size();
    const double M = static_cast<double>(s.n * s.ho * s.wo);
    at::parallel_for(0, s.c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        for (size_t p = 0; p < P; ++p) {
          const bool mx = is_max(p);
          double shift = 0, s1 = 0, s2 = 0;
          bool first = true;
          for (int64_t n = 0; n < s.n; ++n) {
            const scalar_t* xp = x.plane(n, c);
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo) {
                const double v = pool_value<acc_t>(mx, xp, x.s2, x.s3, Window(ho, wo, s.stride, s.h, s.w), s.w);
                if (first) { shift = v; first = false; }
                s1 += v - shift;
                s2 += (v - shift) * (v - shift);
              }
          }
          const double mu = M > 0 ? s1 / M : 0.0;
          mean[p * s.c + c] = static_cast<acc_t>(shift + mu);
          var[p * s.c + c] = static_cast<acc_t>(M > 0 ? std::max(s2 / M - mu * mu, 0.0) : 0.0);
        }
    });
  }
};

template <typename scalar_t>
void read_stats(const at::Tensor& stats, int64_t P, int64_t C, std::vector<at::opmath_type<scalar_t>>& mean,
                std::vector<at::opmath_type<scalar_t>>& var) {
  at::Tensor st = stats.to(at::kDouble).contiguous();
  const double* p = st.const_data_ptr<double>();
  for (int64_t i = 0; i < P; ++i)
    for (int64_t c = 0; c < C; ++c) {
      mean[i * C + c] = static_cast<at::opmath_type<scalar_t>>(p[(i * 2) * C + c]);
      var[i * C + c] = static_cast<at::opmath_type<scalar_t>>(p[(i * 2 + 1) * C + c]);
    }
}

at::ScalarType stats_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

std::tuple<at::Tensor, at::Tensor> mixed_op_free_cpu(const at::Tensor& x, at::TensorList param_outputs,
                                                     const at::Tensor& weights, at::IntArrayRef prims,
                                                     int64_t stride, double eps,
                                                     const std::optional<at::Tensor>& bn_stats) {
  const FreeShape s = check_mixed_op_free("mixed_op_free", x, param_outputs, weights, prims, stride, eps);
  const int64_t P = static_cast<int64_t>(s.pool_slots.size());
  if (bn_stats) check_stats("mixed_op_free", "bn_stats", *bn_stats, s, x);
  at::Tensor y = at::empty({s.n, s.c, s.ho, s.wo}, x.options().memory_format(result_format(x)));
  at::Tensor stats = at::empty({P, 2, s.c}, x.options().dtype(stats_dtype(x.scalar_type())));
  const at::Tensor w = weights.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixed_op_free_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Problem<scalar_t> pb{s, prims, View4<const scalar_t>(x.const_data_ptr<scalar_t>(), x), {},
                         w.const_data_ptr<scalar_t>()};
    for (const auto& p : param_outputs) pb.params.emplace_back(p.const_data_ptr<scalar_t>(), p);
    std::vector<acc_t> mean(P * s.c, 0), var(P * s.c, 0), invstd(P * s.c, 0);
    if (bn_stats) {
      read_stats<scalar_t>(*bn_stats, P, s.c, mean, var);
    } else if (s.n * s.ho * s.wo > 0) {
      pb.batch_stats(mean, var);
    }
    for (int64_t i = 0; i < P * s.c; ++i) invstd[i] = acc_t(1) / std::sqrt(var[i] + static_cast<acc_t>(eps));
    {
      at::Tensor st = at::empty({P, 2, s.c}, at::TensorOptions().dtype(at::kDouble));
      double* q = st.mutable_data_ptr<double>();
      for (int64_t i = 0; i < P; ++i)
        for (int64_t c = 0; c < s.c; ++c) {
          q[(i * 2) * s.c + c] = mean[i * s.c + c];
          q[(i * 2 + 1) * s.c + c] = var[i * s.c + c];
        }
      stats.copy_(st);
    }
    if (y.numel() == 0) return;
    View4<scalar_t> yv(y.mutable_data_ptr<scalar_t>(), y);
    const int64_t plane = s.ho * s.wo;
    at::parallel_for(0, s.n * s.c, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(static_cast<size_t>(plane));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / s.c, c = t % s.c;
        std::fill(buf.begin(), buf.end(), acc_t(0));
        size_t param = 0, pool = 0;
        for (int64_t m = 0; m < s.k; ++m) {
          const acc_t wm = pb.weight(n, m);
          const int64_t code = prims[m];
          if (code == kParam) {
            const auto& pv = pb.params[param++];
            const scalar_t* pp = pv.plane(n, c);
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo)
                buf[ho * s.wo + wo] += wm * static_cast<acc_t>(pp[ho * pv.s2 + wo * pv.s3]);
          } else if (code == kIdentity) {
            const scalar_t* xp = pb.x.plane(n, c);
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo)
                buf[ho * s.wo + wo] += wm * static_cast<acc_t>(xp[ho * pb.x.s2 + wo * pb.x.s3]);
          } else if (is_pool(code)) {
            const bool mx = code == kMaxPool;
            const acc_t mu = mean[pool * s.c + c], is = invstd[pool * s.c + c];
            ++pool;
            const scalar_t* xp = pb.x.plane(n, c);
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo) {
                const acc_t v = pool_value<acc_t>(mx, xp, pb.x.s2, pb.x.s3, Window(ho, wo, s.stride, s.h, s.w), s.w);
                buf[ho * s.wo + wo] += wm * (v - mu) * is;
              }
          }
        }
        scalar_t* yp = yv.plane(n, c);
        for (int64_t ho = 0; ho < s.ho; ++ho)
          for (int64_t wo = 0; wo < s.wo; ++wo) yp[ho * yv.s2 + wo * yv.s3] = static_cast<scalar_t>(buf[ho * s.wo + wo]);
      }
    });
  });
  return {y, stats};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> mixed_op_free_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, at::TensorList param_outputs, const at::Tensor& weights,
    at::IntArrayRef prims, int64_t stride, double eps, const at::Tensor& stats, bool stats_fixed) {
  const char* op = "mixed_op_free_backward";
  const FreeShape s = check_mixed_op_free(op, x, param_outputs, weights, prims, stride, eps);
  check_stats(op, "stats", stats, s, x);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({s.n, s.c, s.ho, s.wo}), op, ": grad must have shape [",
              s.n, ", ", s.c, ", ", s.ho, ", ", s.wo, "], got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad must have dtype ", x.scalar_type());
  const int64_t P = static_cast<int64_t>(s.pool_slots.size());
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(result_format(x)));
  std::vector<at::Tensor> gp;
  for (const auto& p : param_outputs) gp.push_back(at::empty(p.sizes(), p.options().memory_format(result_format(p))));
  const at::Tensor w = weights.contiguous();
  at::Tensor gw = at::zeros_like(w);
  if (x.numel() == 0) {
    gx.zero_();
    return {gx, gp, gw};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mixed_op_free_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Problem<scalar_t> pb{s, prims, View4<const scalar_t>(x.const_data_ptr<scalar_t>(), x), {},
                         w.const_data_ptr<scalar_t>()};
    for (const auto& p : param_outputs) pb.params.emplace_back(p.const_data_ptr<scalar_t>(), p);
    View4<const scalar_t> g(grad.const_data_ptr<scalar_t>(), grad);
    std::vector<acc_t> mean(P * s.c), var(P * s.c), invstd(P * s.c);
    read_stats<scalar_t>(stats, P, s.c, mean, var);
    for (int64_t i = 0; i < P * s.c; ++i) invstd[i] = acc_t(1) / std::sqrt(var[i] + static_cast<acc_t>(eps));
    const acc_t M = static_cast<acc_t>(s.n * s.ho * s.wo);

    // Pass 1, per channel: mean(w g) and mean(w g xhat) of each pool slot, the
    // batch-statistics terms of the BatchNorm backward.
    std::vector<acc_t> mg(P * s.c, 0), mgx(P * s.c, 0);
    if (!stats_fixed && P > 0 && M > 0) {
      at::parallel_for(0, s.c, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c)
          for (int64_t p = 0; p < P; ++p) {
            const bool mx = pb.is_max(p);
            const acc_t mu = mean[p * s.c + c], is = invstd[p * s.c + c];
            double a = 0, b = 0;
            for (int64_t n = 0; n < s.n; ++n) {
              const acc_t wn = pb.weight(n, s.pool_slots[p]);
              const scalar_t* xp = pb.x.plane(n, c);
              const scalar_t* gp_ = g.plane(n, c);
              for (int64_t ho = 0; ho < s.ho; ++ho)
                for (int64_t wo = 0; wo < s.wo; ++wo) {
                  const acc_t v = pool_value<acc_t>(mx, xp, pb.x.s2, pb.x.s3, Window(ho, wo, s.stride, s.h, s.w), s.w);
                  const acc_t gh = wn * static_cast<acc_t>(gp_[ho * g.s2 + wo * g.s3]);
                  a += gh;
                  b += gh * (v - mu) * is;
                }
            }
            mg[p * s.c + c] = static_cast<acc_t>(a / M);
            mgx[p * s.c + c] = static_cast<acc_t>(b / M);
          }
      });
    }

    // Pass 2, per (n, c) plane: every input gradient, and per-plane partial dots
    // for the weight gradient (reduced in a fixed order below).
    std::vector<double> partial(static_cast<size_t>(s.n * s.c * s.k), 0.0);
    std::vector<View4<scalar_t>> gpv;
    for (auto& t : gp) gpv.emplace_back(t.mutable_data_ptr<scalar_t>(), t);
    View4<scalar_t> gxv(gx.mutable_data_ptr<scalar_t>(), gx);
    const int64_t plane_in = s.h * s.w;
    at::parallel_for(0, s.n * s.c, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> gxb(static_cast<size_t>(plane_in));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / s.c, c = t % s.c;
        std::fill(gxb.begin(), gxb.end(), acc_t(0));
        const scalar_t* gpl = g.plane(n, c);
        const scalar_t* xp = pb.x.plane(n, c);
        double* part = partial.data() + t * s.k;
        size_t param = 0;
        int64_t pool = 0;
        for (int64_t m = 0; m < s.k; ++m) {
          const acc_t wm = pb.weight(n, m);
          const int64_t code = prims[m];
          acc_t dot = 0;
          if (code == kParam) {
            const auto& pv = pb.params[param];
            auto& gv = gpv[param];
            ++param;
            const scalar_t* pp = pv.plane(n, c);
            scalar_t* gq = gv.plane(n, c);
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo) {
                const acc_t gi = static_cast<acc_t>(gpl[ho * g.s2 + wo * g.s3]);
                gq[ho * gv.s2 + wo * gv.s3] = static_cast<scalar_t>(wm * gi);
                dot += gi * static_cast<acc_t>(pp[ho * pv.s2 + wo * pv.s3]);
              }
          } else if (code == kIdentity) {
            for (int64_t h = 0; h < s.h; ++h)
              for (int64_t w_ = 0; w_ < s.w; ++w_) {
                const acc_t gi = static_cast<acc_t>(gpl[h * g.s2 + w_ * g.s3]);
                gxb[h * s.w + w_] += wm * gi;
                dot += gi * static_cast<acc_t>(xp[h * pb.x.s2 + w_ * pb.x.s3]);
              }
          } else if (is_pool(code)) {
            const bool mx = code == kMaxPool;
            const acc_t mu = mean[pool * s.c + c], is = invstd[pool * s.c + c];
            const acc_t a = mg[pool * s.c + c], b = mgx[pool * s.c + c];
            ++pool;
            for (int64_t ho = 0; ho < s.ho; ++ho)
              for (int64_t wo = 0; wo < s.wo; ++wo) {
                const Window win(ho, wo, s.stride, s.h, s.w);
                int64_t arg = 0;
                const acc_t v = mx ? window_max<acc_t>(xp, pb.x.s2, pb.x.s3, win, s.w, &arg)
                                   : window_avg<acc_t>(xp, pb.x.s2, pb.x.s3, win);
                const acc_t gi = static_cast<acc_t>(gpl[ho * g.s2 + wo * g.s3]);
                const acc_t xhat = (v - mu) * is;
                dot += gi * xhat;
                const acc_t dp = stats_fixed ? wm * gi * is : is * (wm * gi - a - xhat * b);
                if (mx) {
                  gxb[arg] += dp;
                } else {
                  const acc_t share = dp / static_cast<acc_t>(win.count());
                  for (int64_t h = win.h0; h < win.h1; ++h)
                    for (int64_t w_ = win.w0; w_ < win.w1; ++w_) gxb[h * s.w + w_] += share;
                }
              }
          }
          part[m] = static_cast<double>(dot);
        }
        scalar_t* gxp = gxv.plane(n, c);
        for (int64_t h = 0; h < s.h; ++h)
          for (int64_t w_ = 0; w_ < s.w; ++w_) gxp[h * gxv.s2 + w_ * gxv.s3] = static_cast<scalar_t>(gxb[h * s.w + w_]);
      }
    });
    std::vector<double> acc(static_cast<size_t>(s.per_sample ? s.n * s.k : s.k), 0.0);
    for (int64_t n = 0; n < s.n; ++n)
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t m = 0; m < s.k; ++m) acc[(s.per_sample ? n * s.k : 0) + m] += partial[(n * s.c + c) * s.k + m];
    scalar_t* pgw = gw.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < acc.size(); ++i) pgw[i] = static_cast<scalar_t>(acc[i]);
  });
  return {gx, gp, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(dartscc_fast, CPU, m) {
  m.impl("mixed_op_free", &mixed_op_free_cpu);
  m.impl("mixed_op_free_backward", &mixed_op_free_backward_cpu);
}

}  // namespace dartscc
