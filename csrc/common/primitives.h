// Shared, torch-free constants for the CPU and CUDA kernels.
#pragma once
#include <cstdint>

namespace dartscc {

// The most candidate ops one mixed op may have. DARTS uses 8; the CUDA kernels
// pass their pointer tables by value, so the bound must be a compile-time one.
constexpr int kMaxOps = 16;

// Slot codes of the fused parameter-free path (op `mixed_op_free`). Python's copy,
// with kMaxOps: dartscc_fast/kernel_spec.py (tests/test_kernel_spec.py checks they agree).
enum PrimCode : int64_t {
  kParam = 0,     // output computed outside and passed in
  kNone = 1,      // zero: contributes nothing
  kIdentity = 2,  // skip_connect at stride 1
  kMaxPool = 3,   // max_pool_3x3 (padding 1) followed by BatchNorm2d(affine=False)
  kAvgPool = 4,   // avg_pool_3x3 (padding 1, count_include_pad=False) + BatchNorm2d
};

inline bool is_pool(int64_t code) { return code == kMaxPool || code == kAvgPool; }

}  // namespace dartscc
