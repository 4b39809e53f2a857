// mixed_sum and its backward against a plain ATen reference.
#include "dartscc_ops.h"
#include "harness.h"

namespace {

std::vector<at::Tensor> candidates(int64_t k, at::IntArrayRef shape, at::ScalarType dtype) {
  std::vector<at::Tensor> out;
  for (int64_t m = 0; m < k; ++m) out.push_back(at::randn(shape, at::TensorOptions().dtype(dtype)));
  return out;
}

// weights [k] or [N, k] broadcast against an output [N, ...].
at::Tensor weight_of(const at::Tensor& w, int64_t m, int64_t dim) {
  if (w.dim() == 1) return w[m];
  std::vector<int64_t> shape(static_cast<size_t>(dim), 1);
  shape[0] = w.size(0);
  return w.select(1, m).reshape(shape);
}

at::Tensor reference(const std::vector<at::Tensor>& o, const at::Tensor& w) {
  at::Tensor y = at::zeros_like(o[0], at::kDouble);
  for (size_t m = 0; m < o.size(); ++m) y = y + weight_of(w.to(at::kDouble), m, o[m].dim()) * o[m].to(at::kDouble);
  return y;
}

void check_backward(const std::vector<at::Tensor>& o, const at::Tensor& w, double tol) {
  const at::Tensor g = at::randn_like(o[0]);
  auto [go, gw] = ops::mixed_sum_backward(g, o, w);
  REQUIRE(go.size() == o.size());
  const at::Tensor gd = g.to(at::kDouble);
  for (size_t m = 0; m < o.size(); ++m) {
    REQUIRE_CLOSE(go[m], weight_of(w.to(at::kDouble), m, g.dim()) * gd, tol, tol);
    const at::Tensor dot = (gd * o[m].to(at::kDouble));
    const at::Tensor expect = w.dim() == 1 ? dot.sum() : dot.flatten(1).sum(1);
    REQUIRE_CLOSE(w.dim() == 1 ? gw[m] : gw.select(1, m), expect, tol, tol * 10);
  }
}

}  // namespace

TEST_CASE(forward_per_edge_matches_reference) {
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const auto o = candidates(5, {4, 3, 9, 7}, dtype);
    const at::Tensor w = at::softmax(at::randn({5}, at::TensorOptions().dtype(dtype)), 0);
    const at::Tensor y = ops::mixed_sum(o, w);
    REQUIRE(y.scalar_type() == dtype);
    REQUIRE_CLOSE(y, reference(o, w), dtype == at::kFloat ? 1e-6 : 1e-13, 1e-6);
  }
}

TEST_CASE(forward_per_sample_matches_reference) {
  const auto o = candidates(8, {6, 4, 5, 5}, at::kDouble);
  const at::Tensor w = at::randn({6, 8}, at::TensorOptions().dtype(at::kDouble));
  REQUIRE_CLOSE(ops::mixed_sum(o, w), reference(o, w), 1e-13, 1e-13);
}

TEST_CASE(forward_half_types_within_rounding) {
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    const auto o = candidates(3, {2, 33}, dtype);
    const at::Tensor w = at::softmax(at::randn({2, 3}), 1).to(dtype);
    const at::Tensor y = ops::mixed_sum(o, w);
    REQUIRE(y.scalar_type() == dtype);
    // One rounding of the float accumulation to the half type.
    REQUIRE_CLOSE(y, reference(o, w), dtype == at::kHalf ? 1e-3 : 8e-3, 1e-3);
  }
}

TEST_CASE(forward_keeps_channels_last_and_handles_strided_inputs) {
  auto o = candidates(3, {2, 5, 4, 3}, at::kFloat);
  for (auto& t : o) t = t.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor w = at::randn({3});
  const at::Tensor y = ops::mixed_sum(o, w);
  REQUIRE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
  REQUIRE_CLOSE(y, reference(o, w), 1e-6, 1e-6);
  // Sliced (not dense) outputs and mixed layouts fall back to contiguous copies.
  std::vector<at::Tensor> sliced{o[0].slice(3, 0, 2), o[1].contiguous().slice(3, 1, 3), o[2].slice(3, 1, 3)};
  const at::Tensor w2 = at::randn({2, 3});
  REQUIRE_CLOSE(ops::mixed_sum(sliced, w2), reference(sliced, w2), 1e-6, 1e-6);
}

TEST_CASE(forward_empty_and_single_element) {
  const auto empty = candidates(2, {0, 3}, at::kFloat);
  REQUIRE(ops::mixed_sum(empty, at::randn({2})).numel() == 0);
  REQUIRE(ops::mixed_sum(empty, at::randn({0, 2})).sizes() == at::IntArrayRef({0, 3}));
  const auto one = candidates(1, {1}, at::kDouble);
  const at::Tensor w = at::full({1}, 0.5, at::TensorOptions().dtype(at::kDouble));
  REQUIRE_CLOSE(ops::mixed_sum(one, w), one[0] * 0.5, 0, 0);
}

TEST_CASE(backward_matches_reference) {
  check_backward(candidates(4, {3, 2, 6, 5}, at::kDouble), at::randn({4}, at::TensorOptions().dtype(at::kDouble)),
                 1e-12);
  check_backward(candidates(4, {3, 2, 6, 5}, at::kDouble),
                 at::randn({3, 4}, at::TensorOptions().dtype(at::kDouble)), 1e-12);
  // More than one chunk per sample (the CPU kernel's chunks are 16384 elements).
  check_backward(candidates(2, {2, 20000}, at::kFloat), at::randn({2, 2}), 1e-4);
}

TEST_CASE(backward_is_deterministic) {
  const auto o = candidates(3, {4, 50000}, at::kFloat);
  const at::Tensor w = at::randn({3});
  const at::Tensor g = at::randn_like(o[0]);
  auto [go1, gw1] = ops::mixed_sum_backward(g, o, w);
  auto [go2, gw2] = ops::mixed_sum_backward(g, o, w);
  REQUIRE(at::equal(gw1, gw2));
  for (size_t m = 0; m < go1.size(); ++m) REQUIRE(at::equal(go1[m], go2[m]));
}

TEST_CASE(rejects_bad_arguments) {
  const auto o = candidates(3, {2, 4}, at::kFloat);
  REQUIRE_THROWS_WITH(ops::mixed_sum(o, at::randn({4})), "weights must have shape [k] or [N, k] with k=3, got [4]");
  REQUIRE_THROWS_WITH(ops::mixed_sum(o, at::randn({3, 3})), "per-sample weights must have shape [N, k] = [2, 3]");
  REQUIRE_THROWS_WITH(ops::mixed_sum(o, at::randn({3}, at::TensorOptions().dtype(at::kDouble))),
                    "weights must have the outputs' dtype");
  REQUIRE_THROWS_WITH(ops::mixed_sum({o[0], o[1].t()}, at::randn({2})), "every output must have the shape");
  REQUIRE_THROWS_WITH(ops::mixed_sum(candidates(17, {2}, at::kFloat), at::randn({17})),
                    "expected between 1 and 16 candidate outputs, got 17");
  const auto ints = std::vector<at::Tensor>{at::ones({2}, at::TensorOptions().dtype(at::kLong))};
  REQUIRE_THROWS_WITH(ops::mixed_sum(ints, at::ones({1}, at::TensorOptions().dtype(at::kLong))),
                    "must be a floating-point tensor");
  REQUIRE_THROWS_WITH(ops::mixed_sum_backward(at::randn({2, 5}), o, at::randn({3})), "grad must have shape");
}

DARTSCC_TEST_MAIN()
