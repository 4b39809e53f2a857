// hard_mixed_sum: each sample's drawn op scattered back into the batch, the
// straight-through weight gradient, and the index validation.
#include "dartscc_ops.h"
#include "harness.h"

namespace {

struct Batch {
  at::Tensor index;                 // [N]
  std::vector<at::Tensor> outputs;  // outputs[m]: [count_m, ...], samples in order
  std::vector<int64_t> pos;         // row of sample n in outputs[index[n]]
};

Batch draw(int64_t n, int64_t k, at::IntArrayRef rest, at::ScalarType dtype) {
  Batch b;
  b.index = at::randint(0, k, {n}, at::TensorOptions().dtype(at::kLong));
  const int64_t* ix = b.index.const_data_ptr<int64_t>();
  std::vector<int64_t> count(static_cast<size_t>(k), 0);
  for (int64_t i = 0; i < n; ++i) b.pos.push_back(count[ix[i]]++);
  for (int64_t m = 0; m < k; ++m) {
    std::vector<int64_t> shape{count[m]};
    shape.insert(shape.end(), rest.begin(), rest.end());
    b.outputs.push_back(at::randn(shape, at::TensorOptions().dtype(dtype)));
  }
  return b;
}

at::Tensor weight(const at::Tensor& w, int64_t n, int64_t m) { return w.dim() == 1 ? w[m] : w[n][m]; }

at::Tensor reference(const Batch& b, const at::Tensor& w) {
  std::vector<at::Tensor> rows;
  const int64_t k = static_cast<int64_t>(b.outputs.size());
  for (int64_t n = 0; n < b.index.size(0); ++n) {
    const int64_t m = b.index[n].item<int64_t>();
    at::Tensor rest = at::zeros({}, at::kDouble);
    for (int64_t j = 0; j < k; ++j)
      if (j != m) rest = rest + weight(w, n, j).to(at::kDouble);
    rows.push_back(weight(w, n, m).to(at::kDouble) * b.outputs[m][b.pos[n]].to(at::kDouble) + rest);
  }
  return at::stack(rows);
}

void check_backward(const Batch& b, const at::Tensor& w) {
  const int64_t N = b.index.size(0), k = static_cast<int64_t>(b.outputs.size());
  const at::Tensor g = at::randn_like(reference(b, w)).to(w.scalar_type());
  auto [go, gw] = ops::hard_mixed_sum_backward(g, b.outputs, w, b.index);
  at::Tensor gw_ref = at::zeros({N, k}, at::kDouble);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t m = b.index[n].item<int64_t>();
    REQUIRE_CLOSE(go[m][b.pos[n]], weight(w, n, m).to(at::kDouble) * g[n].to(at::kDouble), 1e-12, 1e-12);
    for (int64_t j = 0; j < k; ++j)
      gw_ref[n][j] = j == m ? (g[n] * b.outputs[m][b.pos[n]]).sum().item<double>() : g[n].sum().item<double>();
  }
  REQUIRE_CLOSE(gw, w.dim() == 1 ? gw_ref.sum(0) : gw_ref, 1e-11, 1e-11);
}

}  // namespace

TEST_CASE(forward_matches_reference) {
  for (bool per_sample : {false, true}) {
    const Batch b = draw(11, 4, {3, 5, 5}, at::kDouble);
    const at::Tensor w = per_sample ? at::randn({11, 4}, at::TensorOptions().dtype(at::kDouble))
                                    : at::randn({4}, at::TensorOptions().dtype(at::kDouble));
    const at::Tensor y = ops::hard_mixed_sum(b.outputs, w, b.index);
    REQUIRE(y.sizes() == at::IntArrayRef({11, 3, 5, 5}));
    REQUIRE_CLOSE(y, reference(b, w), 1e-13, 1e-13);
  }
}

TEST_CASE(forward_float_and_unused_ops) {
  Batch b = draw(6, 3, {7}, at::kFloat);
  // Every sample draws op 1: ops 0 and 2 have empty outputs.
  b.index.fill_(1);
  b.pos = {0, 1, 2, 3, 4, 5};
  b.outputs = {at::randn({0, 7}), at::randn({6, 7}), at::randn({0, 7})};
  const at::Tensor w = at::one_hot(b.index, 3).to(at::kFloat);
  REQUIRE_CLOSE(ops::hard_mixed_sum(b.outputs, w, b.index), b.outputs[1], 0, 0);
}

TEST_CASE(backward_matches_reference) {
  const Batch b = draw(9, 3, {2, 4}, at::kDouble);
  check_backward(b, at::randn({9, 3}, at::TensorOptions().dtype(at::kDouble)));
  check_backward(b, at::randn({3}, at::TensorOptions().dtype(at::kDouble)));
}

TEST_CASE(empty_batch) {
  const Batch b = draw(0, 2, {3}, at::kFloat);
  REQUIRE(ops::hard_mixed_sum(b.outputs, at::randn({2}), b.index).sizes() == at::IntArrayRef({0, 3}));
  auto [go, gw] = ops::hard_mixed_sum_backward(at::randn({0, 3}), b.outputs, at::randn({2}), b.index);
  REQUIRE(go.size() == 2 && at::equal(gw, at::zeros({2})));
}

TEST_CASE(rejects_bad_index_and_shapes) {
  const Batch b = draw(5, 2, {3}, at::kFloat);
  at::Tensor bad = b.index.clone();
  bad[3] = 2;
  REQUIRE_THROWS_WITH(ops::hard_mixed_sum(b.outputs, at::randn({2}), bad), "index[3] = 2 is not in [0, 2)");
  at::Tensor swapped = 1 - b.index;
  if (b.outputs[0].size(0) != b.outputs[1].size(0))
    REQUIRE_THROWS_WITH(ops::hard_mixed_sum(b.outputs, at::randn({2}), swapped), "index draws op 0 for");
  REQUIRE_THROWS_WITH(ops::hard_mixed_sum(b.outputs, at::randn({3}), b.index),
                      "weights must have shape [k] or [N, k] with k=2, got [3]");
  REQUIRE_THROWS_WITH(ops::hard_mixed_sum(b.outputs, at::randn({2}), b.index.to(at::kInt)),
                      "index must be a 1-D int64 tensor");
  REQUIRE_THROWS_WITH(ops::hard_mixed_sum_backward(at::randn({5, 4}), b.outputs, at::randn({2}), b.index),
                      "grad must have shape");
}

DARTSCC_TEST_MAIN()
