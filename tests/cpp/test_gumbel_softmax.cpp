// gumbel_softmax: a probability vector per row, the Philox draw of
// common/philox.h (so reproducible from the seed), hard one-hots, and the
// softmax backward.
#include "common/philox.h"
#include "dartscc_ops.h"
#include "harness.h"

namespace {

at::Tensor seed_of(int64_t s) { return at::scalar_tensor(s, at::TensorOptions().dtype(at::kLong)); }

// softmax((logits + G) / tau) in double, G drawn as the kernels draw it.
at::Tensor reference(const at::Tensor& logits, uint64_t seed, double tau) {
  const at::Tensor l = logits.to(at::kDouble).contiguous();
  at::Tensor g = at::empty_like(l);
  double* pg = g.mutable_data_ptr<double>();
  for (int64_t i = 0; i < l.numel(); ++i) pg[i] = dartscc::gumbel_noise(seed, static_cast<uint64_t>(i));
  return at::softmax((l + g) / tau, -1);
}

}  // namespace

TEST_CASE(rows_are_distributions_and_match_the_philox_reference) {
  for (auto shape : {std::vector<int64_t>{14, 8}, std::vector<int64_t>{5, 14, 3}, std::vector<int64_t>{3, 1}}) {
    const at::Tensor logits = at::randn(shape, at::TensorOptions().dtype(at::kDouble));
    auto [y, soft] = ops::gumbel_softmax(logits, seed_of(1234), 0.7, false);
    REQUIRE(y.sizes() == logits.sizes() && soft.sizes() == logits.sizes());
    REQUIRE_CLOSE(soft.sum(-1), at::ones(soft.sizes().slice(0, soft.dim() - 1), soft.options()), 1e-12, 1e-12);
    REQUIRE((soft >= 0).all().item<bool>());
    REQUIRE_CLOSE(soft, reference(logits, 1234, 0.7), 1e-12, 1e-14);
    REQUIRE(at::equal(y, soft));
  }
  const at::Tensor lf = at::randn({64, 8});
  auto [yf, sf] = ops::gumbel_softmax(lf, seed_of(-5), 1.0, false);
  REQUIRE_CLOSE(sf, reference(lf, static_cast<uint64_t>(int64_t(-5)), 1.0), 1e-5, 1e-6);
}

TEST_CASE(reproducible_for_a_seed) {
  const at::Tensor logits = at::randn({32, 8});
  auto [a, sa] = ops::gumbel_softmax(logits, seed_of(7), 1.0, false);
  auto [b, sb] = ops::gumbel_softmax(logits, seed_of(7), 1.0, false);
  auto [c, sc] = ops::gumbel_softmax(logits, seed_of(8), 1.0, false);
  REQUIRE(at::equal(sa, sb));
  REQUIRE(!at::equal(sa, sc));
}

TEST_CASE(hard_is_the_one_hot_of_the_soft_argmax) {
  const at::Tensor logits = at::randn({50, 6});
  auto [y, soft] = ops::gumbel_softmax(logits, seed_of(99), 0.5, true);
  const at::Tensor expect = at::one_hot(soft.argmax(-1), 6).to(y.scalar_type());
  REQUIRE(at::equal(y, expect));
  auto [y2, soft2] = ops::gumbel_softmax(logits, seed_of(99), 0.5, false);
  REQUIRE(at::equal(soft, soft2));
}

TEST_CASE(half_types) {
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    const at::Tensor logits = at::randn({20, 8}).to(dtype);
    auto [y, soft] = ops::gumbel_softmax(logits, seed_of(3), 1.0, false);
    REQUIRE(soft.scalar_type() == dtype);
    REQUIRE_CLOSE(soft, reference(logits, 3, 1.0), 1e-2, 4e-3);
  }
}

TEST_CASE(backward_is_the_softmax_jacobian) {
  const double tau = 0.6;
  const at::Tensor logits = at::randn({9, 5}, at::TensorOptions().dtype(at::kDouble));
  auto [y, soft] = ops::gumbel_softmax(logits, seed_of(11), tau, false);
  const at::Tensor g = at::randn_like(soft);
  const at::Tensor expect = soft * (g - (g * soft).sum(-1, true)) / tau;
  REQUIRE_CLOSE(ops::gumbel_softmax_backward(g, soft, tau), expect, 1e-12, 1e-14);
  // Through autograd on the reference: same gradient.
  const at::Tensor l = logits.clone().set_requires_grad(true);
  const at::Tensor noise = (reference(logits, 11, tau).log() * tau - logits).detach();  // G up to a row constant
  const at::Tensor ref = at::softmax((l + noise) / tau, -1);
  ref.backward(g);
  REQUIRE_CLOSE(ops::gumbel_softmax_backward(g, soft, tau), l.grad(), 1e-10, 1e-12);
}

TEST_CASE(empty_and_errors) {
  auto [y, soft] = ops::gumbel_softmax(at::randn({0, 4}), seed_of(1), 1.0, false);
  REQUIRE(y.numel() == 0 && soft.sizes() == at::IntArrayRef({0, 4}));
  REQUIRE_THROWS_WITH(ops::gumbel_softmax(at::randn({2, 3}), seed_of(1), 0.0, false), "tau must be finite and > 0");
  REQUIRE_THROWS_WITH(ops::gumbel_softmax(at::randn({2, 3}), at::zeros({1}), 1.0, false),
                      "seed must be a CPU int64 tensor with one element");
  REQUIRE_THROWS_WITH(ops::gumbel_softmax(at::randn({2, 0}), seed_of(1), 1.0, false), "with k >= 1");
  REQUIRE_THROWS_WITH(ops::gumbel_softmax_backward(at::randn({2, 3}), at::randn({2, 4}), 1.0),
                      "grad must have shape");
}

DARTSCC_TEST_MAIN()
