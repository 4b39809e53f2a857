// relu_dw_pw_conv and its backward against ATen's convolutions (in double),
// over kernel sizes, strides, dilations and ragged plane sizes: under the
// sanitizer build this is what checks the kernel's padded-plane arithmetic.
#include "dartscc_ops.h"
#include "harness.h"

namespace {

at::Tensor reference(const at::Tensor& x, const at::Tensor& dw, const at::Tensor& pw, int64_t s, int64_t d) {
  const int64_t k = dw.size(2);
  const at::Tensor t = at::conv2d(at::relu(x), dw, {}, {s, s}, {d * (k - 1) / 2, d * (k - 1) / 2}, {d, d}, x.size(1));
  return at::conv2d(t, pw);
}

struct Case {
  int64_t n, c, co, h, w, k, s, d;
};

void check(const Case& cs, at::ScalarType dtype, double tol) {
  const auto opt = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn({cs.n, cs.c, cs.h, cs.w}, opt);
  const at::Tensor dw = at::randn({cs.c, 1, cs.k, cs.k}, opt), pw = at::randn({cs.co, cs.c, 1, 1}, opt);
  const at::Tensor y = ops::relu_dw_pw_conv(x, dw, pw, cs.s, cs.d);
  // Reference gradients by autograd in double.
  const at::Tensor xd = x.to(at::kDouble).requires_grad_(), dwd = dw.to(at::kDouble).requires_grad_(),
                   pwd = pw.to(at::kDouble).requires_grad_();
  const at::Tensor yd = reference(xd, dwd, pwd, cs.s, cs.d);
  REQUIRE(y.sizes() == yd.sizes());
  REQUIRE_CLOSE(y, yd, tol, tol);
  const at::Tensor g = at::randn(y.sizes(), opt);
  yd.backward(g.to(at::kDouble));
  auto [gx, gdw, gpw] = ops::relu_dw_pw_conv_backward(g, x, dw, pw, cs.s, cs.d);
  REQUIRE_CLOSE(gx, xd.grad(), tol, tol);
  REQUIRE_CLOSE(gdw, dwd.grad(), tol, tol * 10);
  REQUIRE_CLOSE(gpw, pwd.grad(), tol, tol * 10);
}

}  // namespace

TEST_CASE(matches_aten_over_shapes) {
  const Case cases[] = {{2, 3, 4, 7, 6, 3, 1, 1}, {2, 3, 4, 7, 6, 3, 2, 1}, {1, 5, 2, 9, 13, 5, 1, 2},
                        {1, 5, 2, 9, 13, 5, 2, 2}, {3, 16, 16, 28, 28, 3, 1, 1}, {2, 32, 32, 14, 14, 3, 2, 1},
                        {2, 64, 64, 7, 7, 3, 1, 1}, {1, 1, 1, 1, 1, 3, 1, 1}, {1, 2, 3, 2, 3, 7, 2, 1},
                        {2, 4, 6, 8, 8, 1, 2, 1}, {1, 2, 3, 1, 1, 1, 2, 1}, {1, 2, 3, 3, 1, 1, 2, 1}};
  for (const auto& cs : cases) {
    check(cs, at::kDouble, 1e-10);
    check(cs, at::kFloat, 1e-4);
  }
}

TEST_CASE(empty_batch) {
  const at::Tensor x = at::randn({0, 3, 5, 5});
  const at::Tensor y = ops::relu_dw_pw_conv(x, at::randn({3, 1, 3, 3}), at::randn({4, 3, 1, 1}), 1, 1);
  REQUIRE(y.size(0) == 0 && y.size(1) == 4);
  auto [gx, gdw, gpw] = ops::relu_dw_pw_conv_backward(y, x, at::randn({3, 1, 3, 3}), at::randn({4, 3, 1, 1}), 1, 1);
  REQUIRE(gx.sizes() == x.sizes() && gdw.abs().sum().item<float>() == 0.f);
}

TEST_CASE(bad_input_is_refused) {
  const at::Tensor x = at::randn({2, 3, 5, 5});
  REQUIRE_THROWS_WITH(ops::relu_dw_pw_conv(x, at::randn({3, 1, 2, 2}), at::randn({4, 3, 1, 1}), 1, 1), "odd K");
  REQUIRE_THROWS_WITH(ops::relu_dw_pw_conv(x, at::randn({3, 1, 3, 3}), at::randn({4, 3, 1, 1}), 3, 1),
                      "stride 1 or 2");
}

DARTSCC_TEST_MAIN()
