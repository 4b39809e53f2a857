// Run-time choice of the instruction set for the CPU kernels' hot loops.
//
// Each hot loop is written once, as an always-inline body, and compiled twice:
// for the baseline ISA the package is built for, and (x86-64 GCC/Clang) for
// AVX2+FMA. use_avx2() picks at run time from the CPU's features;
// DARTSCC_CPU_ISA=baseline forces the baseline compilation (the tests run both).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <ATen/Parallel.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define DARTSCC_AVX2_CLONE 1
#define DARTSCC_AVX2_ATTR __attribute__((target("avx2,fma")))
#else
#define DARTSCC_AVX2_ATTR
#endif
#if defined(__GNUC__)
#define DARTSCC_INLINE inline __attribute__((always_inline))
#define DARTSCC_INLINE_LAMBDA __attribute__((always_inline))
#else
#define DARTSCC_INLINE inline
#define DARTSCC_INLINE_LAMBDA
#endif

namespace dartscc {
namespace cpu {

inline bool use_avx2() {
#ifdef DARTSCC_AVX2_CLONE
  static const bool v = [] {
    const char* isa = std::getenv("DARTSCC_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return v;
#else
  return false;
#endif
}

// body(begin, end), compiled for AVX2 or the baseline: `body` must be an
// always-inline lambda (DARTSCC_INLINE_LAMBDA) calling only inline code, so
// that all of it is compiled anew inside each of the two functions.
template <typename F>
DARTSCC_AVX2_ATTR void run_avx2(const F& body, int64_t begin, int64_t end) {
  body(begin, end);
}
template <typename F>
void run_baseline(const F& body, int64_t begin, int64_t end) {
  body(begin, end);
}
template <typename F>
void run_isa(const F& body, int64_t begin, int64_t end) {
  if (use_avx2())
    run_avx2(body, begin, end);
  else
    run_baseline(body, begin, end);
}

// body(begin, end) over [0, count) split across threads (at::parallel_for, grain
// 1), each thread's range through run_isa.
template <typename F>
void parallel_isa(int64_t count, const F& body) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) { run_isa(body, begin, end); });
}

}  // namespace cpu
}  // namespace dartscc
