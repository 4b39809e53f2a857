// Counter-based Philox4x32-10 (Salmon et al., SC'11), torch-free and usable on
// host and device. Gumbel noise is a pure function of (seed, element index), so
// the CPU and CUDA kernels draw the same sample, the op stays functional for
// torch.compile, and dartscc_fast/reference.py reproduces it in NumPy.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DARTSCC_HD __host__ __device__ __forceinline__
#else
#define DARTSCC_HD inline
#endif

namespace dartscc {

struct Philox4x32 {
  uint32_t v[4];
};

DARTSCC_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

DARTSCC_HD Philox4x32 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, c0, &hi0, &lo0);
    philox_mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  Philox4x32 r;
  r.v[0] = c0; r.v[1] = c1; r.v[2] = c2; r.v[3] = c3;
  return r;
}

// Standard Gumbel noise for flat element `index`: -log(-log(u)), u in (0, 1).
DARTSCC_HD double gumbel_noise(uint64_t seed, uint64_t index) {
  Philox4x32 r = philox4x32_10(index >> 2, seed);
  uint32_t bits = r.v[index & 3];
  double u = (static_cast<double>(bits) + 0.5) * (1.0 / 4294967296.0);
  return -log(-log(u));
}

}  // namespace dartscc
