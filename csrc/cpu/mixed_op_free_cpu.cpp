#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../common/primitives.h"
#include "../mixed_op_free.h"
#include "plane_ops.h"

// Work is split by (n, c) plane: each plane is gathered into dense buffers, the
// pools are recomputed there (separable 3x3, never stored), and reductions go
// through per-plane partials summed in a fixed order, so results do not depend
// on the thread count. The per-plane loops are compiled for AVX2 and the
// baseline ISA (isa.h).

namespace dartscc {
namespace {

template <typename T>
struct Plane {  // the (n, c) plane of a 4-D strided tensor
  T* p;
  int64_t s0, s1, sh, sw;
  Plane(T* ptr, const at::Tensor& t) : p(ptr), s0(t.stride(0)), s1(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T* at(int64_t n, int64_t c) const { return p + n * s0 + c * s1; }
};

// The planes [0, planes) in parallel, each thread's range through the AVX2 or
// the baseline compilation of `body` (an always-inline lambda: isa.h).
template <typename F>
void for_planes(int64_t planes, const F& body) {
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) { cpu::run_isa(body, begin, end); });
}

at::ScalarType stats_dtype(at::ScalarType t) { return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t; }

template <typename scalar_t>
struct Kernel {
  using acc_t = at::opmath_type<scalar_t>;
  const FreeShape& s;
  at::IntArrayRef prims;
  Plane<const scalar_t> x;
  std::vector<Plane<const scalar_t>> params;
  const scalar_t* w;
  int64_t P;

  DARTSCC_INLINE acc_t weight(int64_t n, int64_t m) const { return static_cast<acc_t>(w[(s.per_sample ? n * s.k : 0) + m]); }
  DARTSCC_INLINE bool is_max(int64_t p) const { return prims[s.pool_slots[p]] == kMaxPool; }

  std::vector<acc_t> inv;  // average-pool divisors

  // Scratch for one plane, per thread; xb and gxb are padded (plane_ops.h).
  struct Scratch {
    std::vector<acc_t> xb, pooled, row, buf, gb, gxb;
    std::vector<int32_t> arg, row_arg;
    Scratch(const FreeShape& s)
        : xb((s.h + 2) * (s.w + 2)), pooled(s.ho * s.wo), row((s.h + 2) * s.wo), buf(s.ho * s.wo), gb(s.ho * s.wo),
          gxb((s.h + 2) * (s.w + 2)), arg(s.ho * s.wo), row_arg((s.h + 2) * s.wo) {}
  };

  void init() {
    inv.resize(s.ho * s.wo);
    cpu::avg_divisors(s.h, s.w, s.stride, s.ho, s.wo, inv.data());
  }
  DARTSCC_INLINE void pool(int64_t p, Scratch& t, bool want_arg) const {
    cpu::pool_plane<acc_t>(is_max(p), t.xb.data(), s.h, s.w, s.stride, s.ho, s.wo, t.pooled.data(),
                           want_arg ? t.arg.data() : nullptr, inv.data(), t.row.data(), t.row_arg.data());
  }
  DARTSCC_INLINE void load_x(int64_t n, int64_t c, Scratch& t) const {
    cpu::load_padded(t.xb.data(), x.at(n, c), s.h, s.w, x.sh, x.sw);
  }
  // x's interior row h (stride 1, where the identity slot exists).
  DARTSCC_INLINE const acc_t* x_row(const Scratch& t, int64_t h) const { return t.xb.data() + (h + 1) * (s.w + 2) + 1; }

  // Batch (mean, biased var) of each pool slot per channel: per-plane mean and
  // M2, merged with Chan's formula (stable, no one-pass cancellation).
  void batch_stats(std::vector<acc_t>& mean, std::vector<acc_t>& var) const {
    const int64_t planes = s.n * s.c, m = s.ho * s.wo;
    std::vector<double> pm(planes * P), pm2(planes * P);
    for_planes(planes, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      Scratch t(s);
      for (int64_t i = begin; i < end; ++i) {
        load_x(i / s.c, i % s.c, t);
        for (int64_t p = 0; p < P; ++p) {
          pool(p, t, false);
          const double mu = static_cast<double>(cpu::sum(t.pooled.data(), m)) / m;
          const double m2 = static_cast<double>(cpu::sq_dev_sum(t.pooled.data(), static_cast<acc_t>(mu), m));
          pm[i * P + p] = mu;
          pm2[i * P + p] = m2;
        }
      }
    });
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t p = 0; p < P; ++p) {
        double cnt = 0, mu = 0, m2 = 0;
        for (int64_t n = 0; n < s.n; ++n) {
          const int64_t i = (n * s.c + c) * P + p;
          const double delta = pm[i] - mu, tot = cnt + m;
          mu += delta * m / tot;
          m2 += pm2[i] + delta * delta * cnt * m / tot;
          cnt = tot;
        }
        mean[p * s.c + c] = static_cast<acc_t>(mu);
        var[p * s.c + c] = static_cast<acc_t>(cnt > 0 ? m2 / cnt : 0.0);
      }
  }
};

template <typename acc_t>
void read_stats(const at::Tensor& stats, int64_t P, int64_t C, std::vector<acc_t>& mean, std::vector<acc_t>& var) {
  at::Tensor st = stats.to(at::kDouble).contiguous();
  const double* q = st.const_data_ptr<double>();
  for (int64_t i = 0; i < P; ++i)
    for (int64_t c = 0; c < C; ++c) {
      mean[i * C + c] = static_cast<acc_t>(q[(i * 2) * C + c]);
      var[i * C + c] = static_cast<acc_t>(q[(i * 2 + 1) * C + c]);
    }
}

template <typename acc_t>
void write_stats(at::Tensor& stats, int64_t P, int64_t C, const std::vector<acc_t>& mean, const std::vector<acc_t>& var) {
  at::Tensor st = at::empty({P, 2, C}, at::TensorOptions().dtype(at::kDouble));
  double* q = st.mutable_data_ptr<double>();
  for (int64_t i = 0; i < P; ++i)
    for (int64_t c = 0; c < C; ++c) {
      q[(i * 2) * C + c] = mean[i * C + c];
      q[(i * 2 + 1) * C + c] = var[i * C + c];
    }
  stats.copy_(st);
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
    using K = Kernel<scalar_t>;
    using acc_t = typename K::acc_t;
    K kr{s, prims, Plane<const scalar_t>(x.const_data_ptr<scalar_t>(), x), {}, w.const_data_ptr<scalar_t>(), P, {}};
    for (const auto& p : param_outputs) kr.params.emplace_back(p.const_data_ptr<scalar_t>(), p);
    kr.init();
    std::vector<acc_t> mean(P * s.c, 0), var(P * s.c, 0);
    if (bn_stats) {
      read_stats(*bn_stats, P, s.c, mean, var);
    } else if (P > 0 && s.n * s.ho * s.wo > 0) {
      kr.batch_stats(mean, var);
    }
    write_stats(stats, P, s.c, mean, var);
    if (y.numel() == 0) return;
    std::vector<acc_t> invstd(P * s.c);
    for (int64_t i = 0; i < P * s.c; ++i) invstd[i] = acc_t(1) / std::sqrt(var[i] + static_cast<acc_t>(eps));
    Plane<scalar_t> yv(y.mutable_data_ptr<scalar_t>(), y);
    const int64_t m = s.ho * s.wo;
    const bool need_x = P > 0 || std::find(prims.begin(), prims.end(), kIdentity) != prims.end();
    for_planes(s.n * s.c, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      typename K::Scratch t(s);
      acc_t* __restrict tmp = t.gb.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / s.c, c = i % s.c;
        acc_t* __restrict buf = cpu::plane_or_buffer(t.buf.data(), yv.at(n, c), s.ho, s.wo, yv.sh, yv.sw);
        std::fill(buf, buf + m, acc_t(0));
        if (need_x) kr.load_x(n, c, t);
        int64_t param = 0, pool = 0;
        for (int64_t slot = 0; slot < s.k; ++slot) {
          const acc_t wm = kr.weight(n, slot);
          const int64_t code = prims[slot];
          if (code == kParam) {
            const auto& pv = kr.params[param++];
            const acc_t* __restrict po = cpu::plane_or_copy(tmp, pv.at(n, c), s.ho, s.wo, pv.sh, pv.sw);
            for (int64_t j = 0; j < m; ++j) buf[j] += wm * po[j];
          } else if (code == kIdentity) {
            for (int64_t h = 0; h < s.h; ++h) {
              const acc_t* __restrict xr = kr.x_row(t, h);
              acc_t* __restrict br = buf + h * s.wo;
              for (int64_t j = 0; j < s.w; ++j) br[j] += wm * xr[j];
            }
          } else if (is_pool(code)) {
            kr.pool(pool, t, false);
            const acc_t a = wm * invstd[pool * s.c + c], b = -a * mean[pool * s.c + c];
            const acc_t* __restrict pooled = t.pooled.data();
            for (int64_t j = 0; j < m; ++j) buf[j] += a * pooled[j] + b;
            ++pool;
          }
        }
        if (buf == t.buf.data()) cpu::store_plane(yv.at(n, c), buf, s.ho, s.wo, yv.sh, yv.sw);
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
  check_grad(op, grad, {s.n, s.c, s.ho, s.wo}, x);
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
    using K = Kernel<scalar_t>;
    using acc_t = typename K::acc_t;
    K kr{s, prims, Plane<const scalar_t>(x.const_data_ptr<scalar_t>(), x), {}, w.const_data_ptr<scalar_t>(), P, {}};
    for (const auto& p : param_outputs) kr.params.emplace_back(p.const_data_ptr<scalar_t>(), p);
    kr.init();
    Plane<const scalar_t> g(grad.const_data_ptr<scalar_t>(), grad);
    std::vector<acc_t> mean(P * s.c), var(P * s.c), invstd(P * s.c);
    read_stats(stats, P, s.c, mean, var);
    for (int64_t i = 0; i < P * s.c; ++i) invstd[i] = acc_t(1) / std::sqrt(var[i] + static_cast<acc_t>(eps));
    const int64_t m = s.ho * s.wo, planes = s.n * s.c;
    const double M = static_cast<double>(s.n * m);

    // Pass 1: per plane, sum(w g) and sum(w g xhat) of each pool slot: the
    // batch-statistics terms of the BatchNorm backward, reduced per channel.
    std::vector<acc_t> mg(P * s.c, 0), mgx(P * s.c, 0);
    if (!stats_fixed && P > 0 && M > 0) {
      std::vector<double> pa(planes * P), pb(planes * P);
      for_planes(planes, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
        typename K::Scratch t(s);
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / s.c, c = i % s.c;
          kr.load_x(n, c, t);
          const acc_t* gp = cpu::plane_or_copy(t.gb.data(), g.at(n, c), s.ho, s.wo, g.sh, g.sw);
          for (int64_t p = 0; p < P; ++p) {
            kr.pool(p, t, false);
            const acc_t wn = kr.weight(n, s.pool_slots[p]), mu = mean[p * s.c + c], is = invstd[p * s.c + c];
            const acc_t sg = cpu::sum(gp, m), sgp = cpu::dot(gp, t.pooled.data(), m);
            pa[i * P + p] = static_cast<double>(wn * sg);
            pb[i * P + p] = static_cast<double>(wn * is) * (static_cast<double>(sgp) - static_cast<double>(mu) * sg);
          }
        }
      });
      for (int64_t c = 0; c < s.c; ++c)
        for (int64_t p = 0; p < P; ++p) {
          double a = 0, b = 0;
          for (int64_t n = 0; n < s.n; ++n) {
            a += pa[(n * s.c + c) * P + p];
            b += pb[(n * s.c + c) * P + p];
          }
          mg[p * s.c + c] = static_cast<acc_t>(a / M);
          mgx[p * s.c + c] = static_cast<acc_t>(b / M);
        }
    }

    // Pass 2: per plane, every input gradient and the weight-gradient partials.
    std::vector<double> partial(planes * s.k, 0.0);
    std::vector<Plane<scalar_t>> gpv;
    for (auto& t : gp) gpv.emplace_back(t.mutable_data_ptr<scalar_t>(), t);
    Plane<scalar_t> gxv(gx.mutable_data_ptr<scalar_t>(), gx);
    for_planes(planes, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      typename K::Scratch t(s);
      std::vector<acc_t> tmp(m), dp(m);
      acc_t* __restrict gxb = t.gxb.data();
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / s.c, c = i % s.c;
        std::fill(t.gxb.begin(), t.gxb.end(), acc_t(0));
        const acc_t* __restrict gb = cpu::plane_or_copy(t.gb.data(), g.at(n, c), s.ho, s.wo, g.sh, g.sw);
        kr.load_x(n, c, t);
        double* part = partial.data() + i * s.k;
        int64_t param = 0, pool = 0;
        for (int64_t slot = 0; slot < s.k; ++slot) {
          const acc_t wm = kr.weight(n, slot);
          const int64_t code = prims[slot];
          if (code == kParam) {
            const auto& pv = kr.params[param];
            auto& gv = gpv[param];
            ++param;
            part[slot] = static_cast<double>(cpu::dot(gb, cpu::plane_or_copy(tmp.data(), pv.at(n, c), s.ho, s.wo, pv.sh, pv.sw), m));
            scalar_t* gvp = gv.at(n, c);
            if (gv.sw == 1 && gv.sh == s.wo) {
              for (int64_t j = 0; j < m; ++j) gvp[j] = static_cast<scalar_t>(wm * gb[j]);
            } else {
              for (int64_t j = 0; j < m; ++j) tmp[j] = wm * gb[j];
              cpu::store_plane(gvp, tmp.data(), s.ho, s.wo, gv.sh, gv.sw);
            }
          } else if (code == kIdentity) {
            double d = 0;
            for (int64_t h = 0; h < s.h; ++h) {
              const acc_t* __restrict gr = gb + h * s.w;
              acc_t* __restrict gxr = gxb + (h + 1) * (s.w + 2) + 1;
              d += static_cast<double>(cpu::dot(gr, kr.x_row(t, h), s.w));
              for (int64_t j = 0; j < s.w; ++j) gxr[j] += wm * gr[j];
            }
            part[slot] = d;
          } else if (is_pool(code)) {
            const bool mx = code == kMaxPool;
            kr.pool(pool, t, mx);
            const acc_t mu = mean[pool * s.c + c], is = invstd[pool * s.c + c];
            const acc_t a = mg[pool * s.c + c], b = mgx[pool * s.c + c];
            ++pool;
            const acc_t* __restrict pooled = t.pooled.data();
            // <g, xhat> = is * (<g, pooled> - mu * sum(g))
            part[slot] = static_cast<double>(is) *
                         (static_cast<double>(cpu::dot(gb, pooled, m)) - static_cast<double>(mu) * cpu::sum(gb, m));
            if (stats_fixed) {
              for (int64_t j = 0; j < m; ++j) dp[j] = wm * is * gb[j];
            } else {
              for (int64_t j = 0; j < m; ++j) dp[j] = is * (wm * gb[j] - a - (pooled[j] - mu) * is * b);
            }
            if (mx) {
              const int32_t* arg = t.arg.data();
              for (int64_t j = 0; j < m; ++j) gxb[arg[j]] += dp[j];
            } else {
              cpu::avg_pool_backward(dp.data(), kr.inv.data(), s.h, s.w, s.stride, s.ho, s.wo, gxb, t.row.data());
            }
          }
        }
        for (int64_t h = 0; h < s.h; ++h) {
          const acc_t* src = gxb + (h + 1) * (s.w + 2) + 1;
          if (gxv.sw == 1)
            cpu::copy_row(gxv.at(n, c) + h * gxv.sh, src, s.w);
          else
            cpu::store_plane(gxv.at(n, c) + h * gxv.sh, src, 1, s.w, s.w, gxv.sw);
        }
      }
    });
    std::vector<double> acc(s.per_sample ? s.n * s.k : s.k, 0.0);
    for (int64_t i = 0; i < planes; ++i)
      for (int64_t slot = 0; slot < s.k; ++slot) acc[(s.per_sample ? (i / s.c) * s.k : 0) + slot] += partial[i * s.k + slot];
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
