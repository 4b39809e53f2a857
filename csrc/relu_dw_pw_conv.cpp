// relu_dw_pw_conv: y = pointwise(depthwise(relu(x))), the unit DARTS's
// convolution candidates are built from (SepConv is two of them, each followed
// by BatchNorm; DilConv is one). x [N, C, H, W], dw_weight [C, 1, K, K] (odd K,
// padding dilation * (K - 1) / 2, so H_out = (H - 1) / stride + 1),
// pw_weight [C_out, C, 1, 1]; no bias.
//
// The depthwise output lives only in a per-sample scratch buffer: the forward
// reads x once and writes y once, and the backward recomputes it, so neither
// the ReLU output nor the depthwise output is ever stored.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.def("relu_dw_pw_conv(Tensor x, Tensor dw_weight, Tensor pw_weight, int stride, int dilation) -> Tensor");
  m.def("relu_dw_pw_conv_backward(Tensor grad, Tensor x, Tensor dw_weight, Tensor pw_weight, int stride, "
        "int dilation) -> (Tensor, Tensor, Tensor)");
}
