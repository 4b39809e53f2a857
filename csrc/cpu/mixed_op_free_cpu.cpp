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

// Short plane rows (7-32 elements) are copied by vector loops: GCC would turn
// them into memmove calls, whose overhead was a sixth of the backward here.
// (Before plane_ops.h and isa.h, whose functions the loops are inlined into.)
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#include "plane_ops.h"

// Work is split by channel: a thread takes whole channels. Per channel, a first
// pass pools every sample's plane (gathered into a padded dense buffer; 3x3
// separable) for the batch statistics and keeps the pools (kernel-local
// scratch, never returned; recomputed instead when a channel's pools would
// exceed Kernel::kKeepElements), and a second pass makes the outputs while the
// channel is still in cache. Reductions go through per-plane partials summed in
// a fixed order, so results do not depend on the thread count. The per-channel
// loops are compiled for AVX2 and the baseline ISA (isa.h).

namespace dartscc {
namespace {

template <typename T>
struct Plane {  // the (n, c) plane of a 4-D strided tensor
  T* p;
  int64_t s0, s1, sh, sw;
  Plane(T* ptr, const at::Tensor& t) : p(ptr), s0(t.stride(0)), s1(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  T* at(int64_t n, int64_t c) const { return p + n * s0 + c * s1; }
  // Prefetch the plane of sample n of channel c, if there is one (N samples).
  DARTSCC_INLINE void prefetch(int64_t n, int64_t N, int64_t c, int64_t H, int64_t W, bool for_write = false) const {
    if (n < N) cpu::prefetch_plane(at(n, c), H, W, sh, sw, for_write);
  }
};

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

  // One channel's pools over the whole batch, kept between the two passes over
  // that channel (so each pool is computed once per call) when they fit in
  // kKeepElements; otherwise the second pass recomputes them.
  static constexpr int64_t kKeepElements = int64_t(1) << 22;
  struct Kept {
    bool on;
    std::vector<acc_t> pooled;   // [P][N][m]
    std::vector<int32_t> arg;    // [P][N][m], max pools only (backward)
    Kept(const FreeShape& s, int64_t P, bool with_arg) : on(P * s.n * s.ho * s.wo <= kKeepElements) {
      if (!on) return;
      pooled.resize(P * s.n * s.ho * s.wo);
      if (with_arg) arg.resize(P * s.n * s.ho * s.wo);
    }
    acc_t* pooled_at(const FreeShape& s, int64_t p, int64_t n) { return pooled.data() + (p * s.n + n) * s.ho * s.wo; }
    int32_t* arg_at(const FreeShape& s, int64_t p, int64_t n) { return arg.data() + (p * s.n + n) * s.ho * s.wo; }
  };

  void init() {
    inv.resize(s.ho * s.wo);
    cpu::avg_divisors(s.h, s.w, s.stride, s.ho, s.wo, inv.data());
  }
  // Pool slot p of the plane loaded in t.xb into `out` (and its argmax into `arg`, max pools, if not null).
  DARTSCC_INLINE void pool(int64_t p, Scratch& t, acc_t* out, int32_t* arg) const {
    cpu::pool_plane<acc_t>(is_max(p), t.xb.data(), s.h, s.w, s.stride, s.ho, s.wo, out, is_max(p) ? arg : nullptr,
                           inv.data(), t.row.data(), t.row_arg.data());
  }
  DARTSCC_INLINE void load_x(int64_t n, int64_t c, Scratch& t) const {
    cpu::load_padded(t.xb.data(), x.at(n, c), s.h, s.w, x.sh, x.sw);
  }
  // Pool slot p of sample n for a second pass over the channel: the kept pool
  // (and argmax), else recomputed from the plane loaded in t.xb. `arg` (max
  // pools, backward) gets the argmax if not null.
  DARTSCC_INLINE const acc_t* pool_again(Kept& kept, int64_t p, int64_t n, Scratch& t, const int32_t** arg) const {
    if (kept.on) {
      if (arg) *arg = kept.arg_at(s, p, n);
      return kept.pooled_at(s, p, n);
    }
    pool(p, t, t.pooled.data(), arg ? t.arg.data() : nullptr);
    if (arg) *arg = t.arg.data();
    return t.pooled.data();
  }
  // 1 / sqrt(var + eps) of every pool slot of channel c, into out[0:P].
  DARTSCC_INLINE void channel_invstd(const std::vector<acc_t>& var, int64_t c, double eps, acc_t* out) const {
    for (int64_t p = 0; p < P; ++p) out[p] = acc_t(1) / std::sqrt(var[p * s.c + c] + static_cast<acc_t>(eps));
  }
  // Whether the identity slot reads x's rows in place (dense rows of the
  // accumulation type) rather than from the plane loaded into t.xb.
  DARTSCC_INLINE bool x_in_place() const { return std::is_same_v<acc_t, scalar_t> && x.sw == 1; }
  // Whether a second pass over sample n must load x's plane into t.xb again.
  DARTSCC_INLINE bool reload_x(bool has_identity, bool kept_on) const {
    return (has_identity && !x_in_place()) || (P > 0 && !kept_on);
  }
  // x's interior row h of sample n (stride 1, where the identity slot exists).
  DARTSCC_INLINE const acc_t* x_row(const Scratch& t, int64_t n, int64_t c, int64_t h) const {
    if constexpr (std::is_same_v<acc_t, scalar_t>) {
      if (x.sw == 1) return x.at(n, c) + h * x.sh;
    }
    return t.xb.data() + (h + 1) * (s.w + 2) + 1;
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
    const int64_t m = s.ho * s.wo;
    std::vector<acc_t> mean(P * s.c, 0), var(P * s.c, 0);
    if (bn_stats) read_stats(*bn_stats, P, s.c, mean, var);
    const bool batch_stats = !bn_stats && P > 0 && s.n * m > 0;
    const bool has_identity = std::find(prims.begin(), prims.end(), kIdentity) != prims.end();
    Plane<scalar_t> yv(y.mutable_data_ptr<scalar_t>(), y);
    cpu::parallel_isa(s.c, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      typename K::Scratch t(s);
      typename K::Kept kept(s, P, false);
      std::vector<double> pm(P * s.n), pm2(P * s.n);
      std::vector<acc_t> invstd(P);
      acc_t* __restrict tmp = t.gb.data();
      for (int64_t c = begin; c < end; ++c) {
        // Pass 1: every sample's pools (kept), and the batch (mean, biased var)
        // of each pool slot: per-plane mean and M2, merged over samples in order
        // with Chan's formula (stable, no one-pass cancellation).
        if (P > 0 && (batch_stats || kept.on)) {
          for (int64_t n = 0; n < s.n; ++n) {
            kr.x.prefetch(n + 1, s.n, c, s.h, s.w);
            kr.load_x(n, c, t);
            for (int64_t p = 0; p < P; ++p) {
              acc_t* out = kept.on ? kept.pooled_at(s, p, n) : t.pooled.data();
              kr.pool(p, t, out, nullptr);
              if (!batch_stats) continue;
              const double mu = static_cast<double>(cpu::sum(out, m)) / m;
              pm[p * s.n + n] = mu;
              pm2[p * s.n + n] = static_cast<double>(cpu::sq_dev_sum(out, static_cast<acc_t>(mu), m));
            }
          }
          for (int64_t p = 0; p < P && batch_stats; ++p) {
            double mu, v;
            cpu::merge_plane_stats(pm.data() + p * s.n, pm2.data() + p * s.n, 1, s.n, m, mu, v);
            mean[p * s.c + c] = static_cast<acc_t>(mu);
            var[p * s.c + c] = static_cast<acc_t>(v);
          }
        }
        kr.channel_invstd(var, c, eps, invstd.data());
        // Pass 2: the outputs.
        for (int64_t n = 0; n < s.n && m > 0; ++n) {
          acc_t* __restrict buf = cpu::plane_or_buffer(t.buf.data(), yv.at(n, c), s.ho, s.wo, yv.sh, yv.sw);
          std::fill(buf, buf + m, acc_t(0));
          const bool reload = kr.reload_x(has_identity, kept.on);
          if (reload || has_identity) kr.x.prefetch(n + 1, s.n, c, s.h, s.w);
          for (const auto& pv : kr.params) pv.prefetch(n + 1, s.n, c, s.ho, s.wo);
          yv.prefetch(n + 1, s.n, c, s.ho, s.wo, true);
          if (reload) kr.load_x(n, c, t);
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
                const acc_t* __restrict xr = kr.x_row(t, n, c, h);
                acc_t* __restrict br = buf + h * s.wo;
                for (int64_t j = 0; j < s.w; ++j) br[j] += wm * xr[j];
              }
            } else if (is_pool(code)) {
              const acc_t* __restrict pooled = kr.pool_again(kept, pool, n, t, nullptr);
              const acc_t a = wm * invstd[pool], b = -a * mean[pool * s.c + c];
              for (int64_t j = 0; j < m; ++j) buf[j] += a * pooled[j] + b;
              ++pool;
            } else if (!std::isfinite(wm)) {  // 'none': w * 0 is NaN for a NaN or inf weight, as in the reference
              for (int64_t j = 0; j < m; ++j) buf[j] += wm * acc_t(0);
            }
          }
          if (buf == t.buf.data()) cpu::store_plane(yv.at(n, c), buf, s.ho, s.wo, yv.sh, yv.sw);
        }
      }
    });
    write_stats(stats, P, s.c, mean, var);
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
    std::vector<acc_t> mean(P * s.c), var(P * s.c);
    read_stats(stats, P, s.c, mean, var);
    const int64_t m = s.ho * s.wo;
    const double M = static_cast<double>(s.n * m);
    const bool batch_terms = !stats_fixed && P > 0 && M > 0;
    std::vector<double> partial(s.n * s.c * s.k, 0.0);  // weight-gradient partials per (n, c) plane
    std::vector<Plane<scalar_t>> gpv;
    for (auto& t : gp) gpv.emplace_back(t.mutable_data_ptr<scalar_t>(), t);
    Plane<scalar_t> gxv(gx.mutable_data_ptr<scalar_t>(), gx);
    const bool has_identity = std::find(prims.begin(), prims.end(), kIdentity) != prims.end();
    cpu::parallel_isa(s.c, [&](int64_t begin, int64_t end) DARTSCC_INLINE_LAMBDA {
      typename K::Scratch t(s);
      typename K::Kept kept(s, P, true);
      std::vector<acc_t> tmp(m), dp(m);
      std::vector<double> pa(s.n), pb(s.n);
      std::vector<acc_t> sgs(P * s.n), sgps(P * s.n);  // pass 1's sum(g) and <g, pooled> per (pool, sample)
      std::vector<acc_t> mg(P), mgx(P), invstd(P);
      acc_t* __restrict gxb = t.gxb.data();
      for (int64_t c = begin; c < end; ++c) {
        kr.channel_invstd(var, c, eps, invstd.data());
        std::fill(mg.begin(), mg.end(), acc_t(0));
        std::fill(mgx.begin(), mgx.end(), acc_t(0));
        // Pass 1: every sample's pools with their argmax (kept), and per pool
        // slot the batch-statistics terms of the BatchNorm backward: the means
        // of w g and of w g xhat over the channel, summed over samples in order.
        if (P > 0 && (batch_terms || kept.on)) {
          for (int64_t p = 0; p < P; ++p) {
            const acc_t mu = mean[p * s.c + c], is = invstd[p];
            for (int64_t n = 0; n < s.n; ++n) {
              kr.x.prefetch(n + 1, s.n, c, s.h, s.w);
              if (batch_terms) g.prefetch(n + 1, s.n, c, s.ho, s.wo);
              kr.load_x(n, c, t);
              acc_t* out = kept.on ? kept.pooled_at(s, p, n) : t.pooled.data();
              kr.pool(p, t, out, kept.on ? kept.arg_at(s, p, n) : nullptr);
              if (!batch_terms) continue;
              const acc_t* gp_ = cpu::plane_or_copy(t.gb.data(), g.at(n, c), s.ho, s.wo, g.sh, g.sw);
              const acc_t wn = kr.weight(n, s.pool_slots[p]);
              const acc_t sg = cpu::sum(gp_, m), sgp = cpu::dot(gp_, out, m);
              sgs[p * s.n + n] = sg;
              sgps[p * s.n + n] = sgp;
              pa[n] = static_cast<double>(wn * sg);
              pb[n] = static_cast<double>(wn * is) * (static_cast<double>(sgp) - static_cast<double>(mu) * sg);
            }
            double a = 0, b = 0;
            if (batch_terms)
              for (int64_t n = 0; n < s.n; ++n) {
                a += pa[n];
                b += pb[n];
              }
            mg[p] = static_cast<acc_t>(a / M);
            mgx[p] = static_cast<acc_t>(b / M);
          }
        }
        // Pass 2: per plane, every input gradient and the weight-gradient partials.
        for (int64_t n = 0; n < s.n; ++n) {
          const int64_t i = n * s.c + c;
          std::fill(t.gxb.begin(), t.gxb.end(), acc_t(0));
          const bool reload = kr.reload_x(has_identity, kept.on);
          g.prefetch(n + 1, s.n, c, s.ho, s.wo);
          if (reload || has_identity) kr.x.prefetch(n + 1, s.n, c, s.h, s.w);
          for (const auto& pv : kr.params) pv.prefetch(n + 1, s.n, c, s.ho, s.wo);
          for (const auto& gv : gpv) gv.prefetch(n + 1, s.n, c, s.ho, s.wo, true);
          gxv.prefetch(n + 1, s.n, c, s.h, s.w, true);
          const acc_t* __restrict gb = cpu::plane_or_copy(t.gb.data(), g.at(n, c), s.ho, s.wo, g.sh, g.sw);
          if (reload) kr.load_x(n, c, t);
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
              // <g, x>: one pass over the plane where x's rows lie back to back, else row by row
              const bool dense = kr.x_in_place() && kr.x.sh == s.w;
              double d = dense ? static_cast<double>(cpu::dot(gb, kr.x_row(t, n, c, 0), m)) : 0.0;
              for (int64_t h = 0; h < s.h; ++h) {
                const acc_t* __restrict gr = gb + h * s.w;
                acc_t* __restrict gxr = gxb + (h + 1) * (s.w + 2) + 1;
                if (!dense) d += static_cast<double>(cpu::dot(gr, kr.x_row(t, n, c, h), s.w));
                for (int64_t j = 0; j < s.w; ++j) gxr[j] += wm * gr[j];
              }
              part[slot] = d;
            } else if (is_pool(code)) {
              const bool mx = code == kMaxPool;
              const int32_t* arg = nullptr;
              const acc_t* __restrict pooled = kr.pool_again(kept, pool, n, t, &arg);
              const acc_t mu = mean[pool * s.c + c], is = invstd[pool];
              const acc_t a = mg[pool], b = mgx[pool];
              // <g, xhat> = is * (<g, pooled> - mu * sum(g)), the sums from pass 1 when it made them
              const acc_t sgp = batch_terms ? sgps[pool * s.n + n] : cpu::dot(gb, pooled, m);
              const acc_t sg = batch_terms ? sgs[pool * s.n + n] : cpu::sum(gb, m);
              ++pool;
              part[slot] = static_cast<double>(is) * (static_cast<double>(sgp) - static_cast<double>(mu) * sg);
              if (stats_fixed) {
                for (int64_t j = 0; j < m; ++j) dp[j] = wm * is * gb[j];
              } else {
                for (int64_t j = 0; j < m; ++j) dp[j] = is * (wm * gb[j] - a - (pooled[j] - mu) * is * b);
              }
              if (mx) {
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
      }
    });
    std::vector<double> acc(s.per_sample ? s.n * s.k : s.k, 0.0);
    for (int64_t i = 0; i < s.n * s.c; ++i)
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
