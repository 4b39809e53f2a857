// batch_norm_train and its backward against ATen's batch norm (in double),
// over plane sizes from 1x1 to 28x28 and channel counts that split unevenly
// over threads: under the sanitizer build this checks the per-plane loops.
#include "dartscc_ops.h"
#include "harness.h"

namespace {

void check(std::vector<int64_t> shape, at::ScalarType dtype, double tol) {
  const at::Tensor x = (at::randn(shape, at::TensorOptions().dtype(dtype)) * 3 + 5);
  auto [y, mean, var] = ops::batch_norm_train(x, 1e-5);
  const at::Tensor xd = x.to(at::kDouble).requires_grad_();
  const at::Tensor yd = at::batch_norm(xd, {}, {}, {}, {}, /*training=*/true, 0.1, 1e-5, false);
  REQUIRE(y.sizes() == x.sizes() && mean.size(0) == x.size(1) && var.size(0) == x.size(1));
  REQUIRE_CLOSE(y, yd, tol * 10, tol * 10);
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  REQUIRE_CLOSE(mean, xd.detach().mean(dims), tol, tol);
  REQUIRE_CLOSE(var, xd.detach().var(dims, /*unbiased=*/false), tol * 10, tol);
  const at::Tensor g = at::randn(x.sizes(), x.options());
  yd.backward(g.to(at::kDouble));
  // The backward cancels terms of size |g| * invstd (with 2 values a channel the exact gradient is about 0), so
  // its rounding error scales with that product, not with the result: atol is relative to it.
  const double scale = (var.to(at::kDouble) + 1e-5).rsqrt().max().item<double>() * g.abs().max().item<double>();
  REQUIRE_CLOSE(ops::batch_norm_train_backward(g, x, mean, var, 1e-5), xd.grad(), tol * 100, tol * 10 * scale);
}

}  // namespace

TEST_CASE(matches_aten_over_shapes) {
  at::manual_seed(0);
  const std::vector<std::vector<int64_t>> shapes{{2, 3, 1, 1}, {5, 3, 9, 13}, {3, 16, 28, 28}, {2, 64, 7, 7},
                                                 {4, 7, 5}, {6, 5}, {1, 3, 2, 1}};
  for (const auto& s : shapes) {
    check(s, at::kDouble, 1e-10);
    check(s, at::kFloat, 1e-5);
  }
}

TEST_CASE(bad_input_is_refused) {
  REQUIRE_THROWS_WITH(ops::batch_norm_train(at::randn({1, 3, 1, 1}), 1e-5), "more than 1 value per channel");
  REQUIRE_THROWS_WITH(ops::batch_norm_train(at::randn({3}), 1e-5), "[N, C, *]");
  REQUIRE_THROWS_WITH(ops::batch_norm_train(at::randn({2, 3, 2, 2}), 0.0), "eps must be finite and > 0");
  const at::Tensor x = at::randn({2, 3, 2, 2});
  auto [y, mean, var] = ops::batch_norm_train(x, 1e-5);
  REQUIRE_THROWS_WITH(ops::batch_norm_train_backward(y, x, mean.narrow(0, 0, 2), var, 1e-5), "mean must have shape");
}

DARTSCC_TEST_MAIN()
