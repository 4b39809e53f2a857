// A minimal test harness for the C++ tests (no GoogleTest on these machines):
// TEST_CASE registers a function, REQUIRE* throw on failure, and DARTSCC_TEST_MAIN
// runs every case, prints one line per case and "N passed, N failed", and
// exits non-zero on any failure.
#pragma once
#include <ATen/ATen.h>

#include <exception>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace harness {

struct Failure : std::exception {
  std::string msg;
  explicit Failure(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  std::ostringstream os;
  os << file << ":" << line << ": " << what;
  throw Failure(os.str());
}

// |actual - expected| <= atol + rtol * |expected| elementwise, compared in
// double; shapes must match.
inline void check_close(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol,
                        const char* a, const char* e, const char* file, int line) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream os;
    os << a << " has shape " << actual.sizes() << " but " << e << " has shape " << expected.sizes();
    fail(file, line, os.str());
  }
  if (actual.numel() == 0) return;
  const at::Tensor x = actual.to(at::kDouble), y = expected.to(at::kDouble);
  const at::Tensor err = (x - y).abs() - (atol + rtol * y.abs());
  const double worst = err.max().item<double>();
  if (!(worst <= 0) || x.isnan().any().item<bool>() != y.isnan().any().item<bool>()) {
    std::ostringstream os;
    os << a << " != " << e << ": max |diff| " << (x - y).abs().max().item<double>() << " (rtol " << rtol
       << ", atol " << atol << ")";
    fail(file, line, os.str());
  }
}

inline int run_all() {
  int passed = 0, failed = 0;
  for (const auto& c : cases()) {
    try {
      c.fn();
      ++passed;
      std::cout << "PASS " << c.name << std::endl;
    } catch (const std::exception& ex) {
      ++failed;
      std::cout << "FAIL " << c.name << ": " << ex.what() << std::endl;
    }
  }
  if (cases().empty()) {
    std::cout << "no test cases registered" << std::endl;
    return 1;
  }
  std::cout << passed << " passed, " << failed << " failed" << std::endl;
  return failed == 0 ? 0 : 1;
}

}  // namespace harness

#define DARTSCC_CAT2(a, b) a##b
#define DARTSCC_CAT(a, b) DARTSCC_CAT2(a, b)
#define TEST_CASE(name)                                                   \
  static void name();                                                     \
  static harness::Register DARTSCC_CAT(register_, name)(#name, &name);    \
  static void name()

#define REQUIRE(cond)                                                      \
  do {                                                                   \
    if (!(cond)) harness::fail(__FILE__, __LINE__, "REQUIRE(" #cond ")"); \
  } while (0)

#define REQUIRE_CLOSE(actual, expected, rtol, atol) \
  harness::check_close((actual), (expected), (rtol), (atol), #actual, #expected, __FILE__, __LINE__)

// The statement must throw a c10::Error whose message contains `substr`.
#define REQUIRE_THROWS_WITH(stmt, substr)                                                                  \
  do {                                                                                                   \
    bool thrown_ = false;                                                                                \
    try {                                                                                                \
      stmt;                                                                                              \
    } catch (const c10::Error& e_) {                                                                     \
      thrown_ = true;                                                                                    \
      const std::string msg_ = e_.what_without_backtrace();                                              \
      if (msg_.find(substr) == std::string::npos)                                                        \
        harness::fail(__FILE__, __LINE__, std::string("error \"") + msg_ + "\" lacks \"" + (substr) + "\""); \
    }                                                                                                    \
    if (!thrown_) harness::fail(__FILE__, __LINE__, "expected an error from " #stmt);                    \
  } while (0)

#define DARTSCC_TEST_MAIN() \
  int main() { return harness::run_all(); }
