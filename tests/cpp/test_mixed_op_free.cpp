// mixed_op_free against ATen's own max_pool2d / avg_pool2d / batch_norm, with
// ATen autograd as the oracle for the fused backward.
#include "common/primitives.h"
#include "dartscc_ops.h"
#include "harness.h"

namespace {

using dartscc::kAvgPool;
using dartscc::kIdentity;
using dartscc::kMaxPool;
using dartscc::kNone;
using dartscc::kParam;

constexpr double kEps = 1e-5;

struct Inputs {
  at::Tensor x, w;
  std::vector<at::Tensor> params;
  std::optional<at::Tensor> bn_stats;
};

int64_t out_size(int64_t n, int64_t stride) { return (n - 1) / stride + 1; }

Inputs make(const std::vector<int64_t>& prims, int64_t stride, bool per_sample, bool eval,
            at::ScalarType dtype = at::kDouble, std::vector<int64_t> shape = {3, 4, 7, 6}) {
  const auto opt = at::TensorOptions().dtype(dtype);
  Inputs in;
  in.x = at::randn(shape, opt);
  const int64_t N = shape[0], C = shape[1], k = static_cast<int64_t>(prims.size());
  int64_t pools = 0;
  for (auto code : prims) {
    if (code == kParam) in.params.push_back(at::randn({N, C, out_size(shape[2], stride), out_size(shape[3], stride)}, opt));
    if (code == kMaxPool || code == kAvgPool) ++pools;
  }
  in.w = per_sample ? at::randn({N, k}, opt) : at::randn({k}, opt);
  if (eval) {
    at::Tensor st = at::randn({pools, 2, C}, opt);
    st.select(1, 1).uniform_(0.5, 2.0);  // variances
    in.bn_stats = st;
  }
  return in;
}

// The mixed op in plain ATen, differentiable by ATen autograd.
at::Tensor reference(const Inputs& in, const std::vector<int64_t>& prims, int64_t stride, at::Tensor* stats_out) {
  const at::Tensor& x = in.x;
  at::Tensor y;
  std::vector<at::Tensor> stats;
  size_t param = 0;
  int64_t pool = 0;
  for (size_t m = 0; m < prims.size(); ++m) {
    at::Tensor term;
    const int64_t code = prims[m];
    if (code == kNone) continue;
    if (code == kParam) term = in.params[param++];
    if (code == kIdentity) term = x;
    if (code == kMaxPool || code == kAvgPool) {
      const at::Tensor p = code == kMaxPool
                               ? at::max_pool2d(x, {3, 3}, {stride, stride}, {1, 1})
                               : at::avg_pool2d(x, {3, 3}, {stride, stride}, {1, 1}, false, /*count_include_pad=*/false);
      if (in.bn_stats) {
        const at::Tensor mean = in.bn_stats->select(0, pool).select(0, 0), var = in.bn_stats->select(0, pool).select(0, 1);
        term = at::batch_norm(p, {}, {}, mean, var, /*training=*/false, 0.0, kEps, false);
        stats.push_back(in.bn_stats->select(0, pool));
      } else {
        term = at::batch_norm(p, {}, {}, {}, {}, /*training=*/true, 0.1, kEps, false);
        const at::Tensor pd = p.detach();
        stats.push_back(at::stack({pd.mean({0, 2, 3}), at::var(pd, at::IntArrayRef{0, 2, 3}, false, false)}));
      }
      ++pool;
    }
    const at::Tensor wm = in.w.dim() == 1 ? in.w[m] : in.w.select(1, m).reshape({-1, 1, 1, 1});
    y = y.defined() ? y + wm * term : wm * term;
  }
  if (stats_out != nullptr && !stats.empty()) *stats_out = at::stack(stats);
  return y;
}

void check_forward_backward(const std::vector<int64_t>& prims, int64_t stride, bool per_sample, bool eval,
                            at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  Inputs in = make(prims, stride, per_sample, eval);
  in.x = in.x.contiguous(format);
  for (auto& p : in.params) p = p.contiguous(format);
  auto [y, stats] = ops::mixed_op_free(in.x, in.params, in.w, prims, stride, kEps, in.bn_stats);

  Inputs ref = in;
  ref.x = in.x.detach().clone().set_requires_grad(true);
  ref.w = in.w.detach().clone().set_requires_grad(true);
  for (auto& p : ref.params) p = p.detach().clone().set_requires_grad(true);
  at::Tensor ref_stats;
  const at::Tensor y_ref = reference(ref, prims, stride, &ref_stats);
  REQUIRE_CLOSE(y, y_ref, 1e-10, 1e-10);
  REQUIRE(y.is_contiguous(format));
  if (ref_stats.defined()) REQUIRE_CLOSE(stats, ref_stats, 1e-12, 1e-12);

  const at::Tensor g = at::randn_like(y_ref);
  y_ref.backward(g);
  auto [gx, gp, gw] =
      ops::mixed_op_free_backward(g, in.x, in.params, in.w, prims, stride, kEps, stats, in.bn_stats.has_value());
  REQUIRE_CLOSE(gx, ref.x.grad(), 1e-9, 1e-9);
  REQUIRE_CLOSE(gw, ref.w.grad(), 1e-9, 1e-9);
  REQUIRE(gp.size() == in.params.size());
  for (size_t j = 0; j < gp.size(); ++j) REQUIRE_CLOSE(gp[j], ref.params[j].grad(), 1e-12, 1e-12);
  REQUIRE(gx.is_contiguous(format));
}

}  // namespace

TEST_CASE(stride1_per_edge_training) {
  check_forward_backward({kParam, kNone, kIdentity, kMaxPool, kAvgPool}, 1, false, false);
}

TEST_CASE(stride1_per_sample_training) {
  check_forward_backward({kMaxPool, kIdentity, kParam, kAvgPool, kParam}, 1, true, false);
}

TEST_CASE(stride2_per_sample_training) { check_forward_backward({kAvgPool, kParam, kMaxPool, kNone}, 2, true, false); }

TEST_CASE(eval_mode_uses_given_stats) {
  check_forward_backward({kParam, kMaxPool, kIdentity, kAvgPool}, 1, false, true);
  check_forward_backward({kMaxPool, kAvgPool}, 2, true, true);
}

TEST_CASE(channels_last_in_channels_last_out) {
  check_forward_backward({kParam, kIdentity, kMaxPool, kAvgPool}, 1, true, false, at::MemoryFormat::ChannelsLast);
}

TEST_CASE(max_pool_ties_go_to_the_first_maximum) {
  // Few distinct values: most windows hold ties, whose gradient ATen sends to
  // the first maximum in scan order.
  const std::vector<int64_t> prims{kMaxPool};
  Inputs in = make(prims, 1, false, false);
  in.x = at::randint(0, 3, {2, 3, 6, 5}, in.x.options());
  auto [y, stats] = ops::mixed_op_free(in.x, {}, in.w, prims, 1, kEps, std::nullopt);
  Inputs ref = in;
  ref.x = in.x.clone().set_requires_grad(true);
  const at::Tensor y_ref = reference(ref, prims, 1, nullptr);
  const at::Tensor g = at::randn_like(y_ref);
  y_ref.backward(g);
  auto [gx, gp, gw] = ops::mixed_op_free_backward(g, in.x, {}, in.w, prims, 1, kEps, stats, false);
  REQUIRE_CLOSE(y, y_ref, 1e-10, 1e-10);
  REQUIRE_CLOSE(gx, ref.x.grad(), 1e-9, 1e-9);
}

TEST_CASE(float_and_half_forward) {
  const std::vector<int64_t> prims{kParam, kMaxPool, kAvgPool, kIdentity};
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    Inputs in = make(prims, 1, true, false, dtype);
    auto [y, stats] = ops::mixed_op_free(in.x, in.params, in.w, prims, 1, kEps, std::nullopt);
    REQUIRE(y.scalar_type() == dtype && stats.scalar_type() == at::kFloat);
    Inputs ref = in;
    ref.x = in.x.to(at::kDouble);
    ref.w = in.w.to(at::kDouble);
    for (auto& p : ref.params) p = p.to(at::kDouble);
    REQUIRE_CLOSE(y, reference(ref, prims, 1, nullptr), dtype == at::kFloat ? 1e-4 : 3e-2, dtype == at::kFloat ? 1e-4 : 3e-2);
  }
}

TEST_CASE(empty_batch) {
  const std::vector<int64_t> prims{kMaxPool, kParam};
  Inputs in = make(prims, 2, false, false, at::kFloat, {0, 3, 5, 5});
  auto [y, stats] = ops::mixed_op_free(in.x, in.params, in.w, prims, 2, kEps, std::nullopt);
  REQUIRE(y.sizes() == at::IntArrayRef({0, 3, 3, 3}));
  REQUIRE(at::equal(stats, at::zeros({1, 2, 3})));
  auto [gx, gp, gw] = ops::mixed_op_free_backward(at::zeros({0, 3, 3, 3}), in.x, in.params, in.w, prims, 2, kEps,
                                                  stats, false);
  REQUIRE(gx.numel() == 0 && at::equal(gw, at::zeros({2})));
}

TEST_CASE(rejects_bad_arguments) {
  const std::vector<int64_t> prims{kParam, kMaxPool, kIdentity};
  const Inputs in = make(prims, 1, false, false, at::kFloat);
  REQUIRE_THROWS_WITH(ops::mixed_op_free(in.x, in.params, at::randn({4}), prims, 1, kEps, std::nullopt),
                      "weights must have shape [k] or [N, k] with k=3, got [4]");
  REQUIRE_THROWS_WITH(ops::mixed_op_free(in.x, in.params, in.w, prims, 2, kEps, std::nullopt),
                      "prims[2] is identity, which needs stride 1");
  REQUIRE_THROWS_WITH(ops::mixed_op_free(in.x, in.params, in.w, std::vector<int64_t>{0, 3, 7}, 1, kEps, std::nullopt),
                      "prims[2] = 7 is not a slot code");
  REQUIRE_THROWS_WITH(ops::mixed_op_free(in.x, {}, in.w, prims, 1, kEps, std::nullopt),
                      "prims has 1 param slots but 0 param_outputs were given");
  REQUIRE_THROWS_WITH(ops::mixed_op_free(in.x, in.params, in.w, prims, 1, kEps, at::zeros({2, 2, 4})),
                      "bn_stats must have shape [P, 2, C] = [1, 2, 4]");
}

DARTSCC_TEST_MAIN()
