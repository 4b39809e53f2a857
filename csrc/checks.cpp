#include "checks.h"

#include <cmath>
#include <sstream>

namespace dartscc {

void check_float_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but the other inputs are on ", ref.device());
}

void check_grad(const char* op, const at::Tensor& grad, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(grad.sizes() == shape, op, ": grad must have shape ", shape, ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == like.scalar_type(), op, ": grad must have dtype ", like.scalar_type(), ", got ",
              grad.scalar_type());
  check_same_device(op, "grad", grad, like);
}

DwPwShape check_relu_dw_pw_conv(const char* op, const at::Tensor& x, const at::Tensor& dw_weight,
                                const at::Tensor& pw_weight, int64_t stride, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  DwPwShape s;
  s.n = x.size(0), s.c = x.size(1), s.h = x.size(2), s.w = x.size(3);
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == s.c && dw_weight.size(1) == 1 &&
                  dw_weight.size(2) == dw_weight.size(3) && dw_weight.size(2) % 2 == 1,
              op, ": dw_weight must have shape [C, 1, K, K] with C=", s.c, " (x's channels) and odd K, got ",
              dw_weight.sizes());
  TORCH_CHECK(pw_weight.dim() == 4 && pw_weight.size(1) == s.c && pw_weight.size(2) == 1 &&
                  pw_weight.size(3) == 1,
              op, ": pw_weight must have shape [C_out, C, 1, 1] with C=", s.c, ", got ", pw_weight.sizes());
  for (const auto* t : {&dw_weight, &pw_weight}) {
    const char* name = t == &dw_weight ? "dw_weight" : "pw_weight";
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                ", got ", t->scalar_type());
    check_same_device(op, name, *t, x);
  }
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  s.co = pw_weight.size(0);
  s.k = dw_weight.size(2);
  s.stride = stride;
  s.dilation = dilation;
  s.pad = dilation * (s.k - 1) / 2;
  s.ho = s.h == 0 ? 0 : (s.h - 1) / stride + 1;
  s.wo = s.w == 0 ? 0 : (s.w - 1) / stride + 1;
  s.hp = s.h + 2 * s.pad;
  s.wp = s.w + 2 * s.pad;
  return s;
}

MixedShape check_mixed_sum(const char* op, at::TensorList outputs, const at::Tensor& weights) {
  MixedShape s;
  s.k = static_cast<int64_t>(outputs.size());
  TORCH_CHECK(s.k >= 1 && s.k <= kMaxOps, op, ": expected between 1 and ", kMaxOps,
              " candidate outputs, got ", s.k);
  const at::Tensor& o0 = outputs[0];
  check_float_dtype(op, "outputs", o0);
  for (int64_t m = 1; m < s.k; ++m) {
    const at::Tensor& o = outputs[m];
    TORCH_CHECK(o.sizes() == o0.sizes(), op, ": every output must have the shape of outputs[0] ",
                o0.sizes(), ", but outputs[", m, "] has shape ", o.sizes());
    TORCH_CHECK(o.scalar_type() == o0.scalar_type(), op, ": every output must have dtype ",
                o0.scalar_type(), ", but outputs[", m, "] has dtype ", o.scalar_type());
    check_same_device(op, "an output", o, o0);
  }
  check_same_device(op, "weights", weights, o0);
  TORCH_CHECK(weights.scalar_type() == o0.scalar_type(), op, ": weights must have the outputs' dtype ",
              o0.scalar_type(), ", got ", weights.scalar_type());
  if (weights.dim() == 1) {
    TORCH_CHECK(weights.size(0) == s.k, op, ": weights must have shape [k] or [N, k] with k=", s.k,
                ", got ", weights.sizes());
    s.rows = 1;
  } else if (weights.dim() == 2) {
    TORCH_CHECK(o0.dim() >= 1 && weights.size(0) == o0.size(0) && weights.size(1) == s.k, op,
                ": per-sample weights must have shape [N, k] = [", (o0.dim() >= 1 ? o0.size(0) : 0),
                ", ", s.k, "] (N from the outputs' first dimension), got ", weights.sizes());
    s.rows = o0.size(0);
    s.per_sample = true;
  } else {
    TORCH_CHECK(false, op, ": weights must have shape [k] or [N, k] with k=", s.k, ", got ",
                weights.sizes());
  }
  s.inner = s.rows == 0 ? 0 : o0.numel() / s.rows;
  return s;
}

std::vector<at::Tensor> same_layout(at::TensorList outputs, bool per_sample) {
  const at::Tensor& o0 = outputs[0];
  bool ok = o0.is_non_overlapping_and_dense();
  if (ok && per_sample && o0.dim() >= 1 && o0.size(0) > 1)
    ok = o0.stride(0) * o0.size(0) == o0.numel();  // each sample one contiguous block
  for (size_t m = 1; ok && m < outputs.size(); ++m) ok = outputs[m].strides() == o0.strides();
  std::vector<at::Tensor> out;
  out.reserve(outputs.size());
  for (const auto& o : outputs) out.push_back(ok ? o : o.contiguous());
  return out;
}

}  // namespace dartscc

#include "gumbel_softmax.h"

namespace dartscc {

static void check_tau(const char* op, double tau) {
  TORCH_CHECK(std::isfinite(tau) && tau > 0, op, ": tau must be finite and > 0, got ", tau);
}

uint64_t check_gumbel_softmax(const at::Tensor& logits, const at::Tensor& seed, double tau) {
  check_tau("gumbel_softmax", tau);
  check_float_dtype("gumbel_softmax", "logits", logits);
  TORCH_CHECK(logits.dim() >= 1 && logits.size(-1) >= 1,
              "gumbel_softmax: logits must have shape [E, k] or [N, E, k] with k >= 1, got ", logits.sizes());
  TORCH_CHECK(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1,
              "gumbel_softmax: seed must be a CPU int64 tensor with one element, got ", seed.scalar_type(),
              " ", seed.sizes(), " on ", seed.device());
  return static_cast<uint64_t>(seed.item<int64_t>());
}

void check_gumbel_softmax_backward(const at::Tensor& grad, const at::Tensor& soft, double tau) {
  check_tau("gumbel_softmax_backward", tau);
  TORCH_CHECK(grad.sizes() == soft.sizes(), "gumbel_softmax_backward: grad must have shape ", soft.sizes(),
              ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == soft.scalar_type(), "gumbel_softmax_backward: grad must have dtype ",
              soft.scalar_type(), ", got ", grad.scalar_type());
  check_same_device("gumbel_softmax_backward", "grad", grad, soft);
}

}  // namespace dartscc

#include "hard_mixed_sum.h"

namespace dartscc {

HardShape check_hard_mixed_sum(const char* op, at::TensorList outputs, const at::Tensor& weights,
                               const at::Tensor& index) {
  HardShape s;
  s.k = static_cast<int64_t>(outputs.size());
  TORCH_CHECK(s.k >= 1 && s.k <= kMaxOps, op, ": expected between 1 and ", kMaxOps,
              " candidate outputs, got ", s.k);
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, op,
              ": index must be a 1-D int64 tensor [N], got ", index.scalar_type(), " ", index.sizes());
  s.n = index.size(0);
  const at::Tensor& o0 = outputs[0];
  check_float_dtype(op, "outputs", o0);
  TORCH_CHECK(o0.dim() >= 1, op, ": outputs must have shape [count_m, ...], got a scalar");
  auto rest = o0.sizes().slice(1);
  int64_t total = 0;
  for (int64_t m = 0; m < s.k; ++m) {
    const at::Tensor& o = outputs[m];
    TORCH_CHECK(o.dim() == o0.dim() && o.sizes().slice(1) == rest, op,
                ": outputs[m] must have shape [count_m, ", rest, "], but outputs[", m, "] has shape ", o.sizes());
    TORCH_CHECK(o.scalar_type() == o0.scalar_type(), op, ": outputs[", m, "] has dtype ", o.scalar_type(),
                ", expected ", o0.scalar_type());
    check_same_device(op, "an output", o, o0);
    total += o.size(0);
  }
  TORCH_CHECK(total == s.n, op, ": the outputs hold ", total, " samples in all but index has ", s.n);
  check_same_device(op, "weights", weights, o0);
  check_same_device(op, "index", index, o0);
  TORCH_CHECK(weights.scalar_type() == o0.scalar_type(), op, ": weights must have the outputs' dtype ",
              o0.scalar_type(), ", got ", weights.scalar_type());
  if (weights.dim() == 1) {
    TORCH_CHECK(weights.size(0) == s.k, op, ": weights must have shape [k] or [N, k] with k=", s.k, ", got ",
                weights.sizes());
  } else {
    TORCH_CHECK(weights.dim() == 2 && weights.size(0) == s.n && weights.size(1) == s.k, op,
                ": weights must have shape [k] or [N, k] = [", s.n, ", ", s.k, "], got ", weights.sizes());
    s.per_sample = true;
  }
  s.inner = 1;
  for (auto d : rest) s.inner *= d;
  s.out_shape.push_back(s.n);
  for (auto d : rest) s.out_shape.push_back(d);
  return s;
}

}  // namespace dartscc

#include "mixed_op_free.h"

namespace dartscc {

at::MemoryFormat result_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

FreeShape check_mixed_op_free(const char* op, const at::Tensor& x, at::TensorList param_outputs,
                              const at::Tensor& weights, at::IntArrayRef prims, int64_t stride, double eps) {
  FreeShape s;
  check_float_dtype(op, "x", x);
  TORCH_CHECK(x.dim() == 4, op, ": x must have shape [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  s.k = static_cast<int64_t>(prims.size());
  TORCH_CHECK(s.k >= 1 && s.k <= kMaxOps, op, ": prims must list between 1 and ", kMaxOps, " slots, got ", s.k);
  s.n = x.size(0); s.c = x.size(1); s.h = x.size(2); s.w = x.size(3); s.stride = stride;
  s.ho = s.h == 0 ? 0 : (s.h - 1) / stride + 1;
  s.wo = s.w == 0 ? 0 : (s.w - 1) / stride + 1;
  for (int64_t m = 0; m < s.k; ++m) {
    const int64_t code = prims[m];
    TORCH_CHECK(code >= kParam && code <= kAvgPool, op, ": prims[", m, "] = ", code,
                " is not a slot code (0 param, 1 none, 2 identity, 3 max_pool, 4 avg_pool)");
    TORCH_CHECK(!(code == kIdentity && stride != 1), op, ": prims[", m,
                "] is identity, which needs stride 1 (at stride 2 skip_connect is FactorizedReduce: "
                "pass its output as a param slot)");
    if (code == kParam) s.param_slots.push_back(m);
    if (is_pool(code)) s.pool_slots.push_back(m);
  }
  TORCH_CHECK(static_cast<int64_t>(param_outputs.size()) == static_cast<int64_t>(s.param_slots.size()), op,
              ": prims has ", s.param_slots.size(), " param slots but ", param_outputs.size(),
              " param_outputs were given");
  const std::vector<int64_t> out_shape{s.n, s.c, s.ho, s.wo};
  for (size_t j = 0; j < param_outputs.size(); ++j) {
    const at::Tensor& p = param_outputs[j];
    TORCH_CHECK(p.sizes() == at::IntArrayRef(out_shape), op, ": param_outputs[", j, "] must have shape ",
                at::IntArrayRef(out_shape), ", got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == x.scalar_type(), op, ": param_outputs[", j, "] has dtype ", p.scalar_type(),
                ", expected x's ", x.scalar_type());
    check_same_device(op, "a param output", p, x);
  }
  check_same_device(op, "weights", weights, x);
  TORCH_CHECK(weights.scalar_type() == x.scalar_type(), op, ": weights must have x's dtype ", x.scalar_type(),
              ", got ", weights.scalar_type());
  if (weights.dim() == 1) {
    TORCH_CHECK(weights.size(0) == s.k, op, ": weights must have shape [k] or [N, k] with k=", s.k, ", got ",
                weights.sizes());
  } else {
    TORCH_CHECK(weights.dim() == 2 && weights.size(0) == s.n && weights.size(1) == s.k, op,
                ": weights must have shape [k] or [N, k] = [", s.n, ", ", s.k, "], got ", weights.sizes());
    s.per_sample = true;
  }
  return s;
}

void check_stats(const char* op, const char* name, const at::Tensor& stats, const FreeShape& s,
                 const at::Tensor& x) {
  const int64_t p = static_cast<int64_t>(s.pool_slots.size());
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == p && stats.size(1) == 2 && stats.size(2) == s.c, op, ": ",
              name, " must have shape [P, 2, C] = [", p, ", 2, ", s.c, "] (mean and var of each pool slot), got ",
              stats.sizes());
  check_float_dtype(op, name, stats);
  check_same_device(op, name, stats, x);
}

BnShape check_batch_norm_train(const char* op, const at::Tensor& x, double eps) {
  TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [N, C, *], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be finite and > 0 (as torch's training-mode BatchNorm), got ",
              eps);
  BnShape s;
  s.n = x.size(0);
  s.c = x.size(1);
  for (int64_t d = 2; d < x.dim(); ++d) s.m *= x.size(d);
  TORCH_CHECK(s.n * s.m > 1, op, ": expected more than 1 value per channel when training, got input of shape ",
              x.sizes());
  return s;
}

void check_node_sum(const char* op, at::TensorList xs) {
  TORCH_CHECK(!xs.empty(), op, ": xs must hold at least one tensor");
  const at::Tensor& x0 = xs[0];
  TORCH_CHECK(x0.scalar_type() == at::kFloat || x0.scalar_type() == at::kDouble, op,
              ": xs must be float32 or float64, got ", x0.scalar_type());
  for (size_t i = 1; i < xs.size(); ++i) {
    TORCH_CHECK(xs[i].sizes() == x0.sizes(), op, ": xs[", i, "] has shape ", xs[i].sizes(), ", xs[0] ",
                x0.sizes());
    TORCH_CHECK(xs[i].scalar_type() == x0.scalar_type(), op, ": xs[", i, "] has dtype ", xs[i].scalar_type(),
                ", xs[0] ", x0.scalar_type());
    check_same_device(op, "xs[i]", xs[i], x0);
  }
}

}  // namespace dartscc
