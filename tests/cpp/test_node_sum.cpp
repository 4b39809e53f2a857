// node_sum against pairwise additions (bitwise: the same additions in the same
// order), over sizes around the kernel's block size and thread split, so the
// sanitizer build checks the block loop's bounds.
#include "dartscc_ops.h"
#include "harness.h"

TEST_CASE(equals_pairwise_additions) {
  for (int64_t numel : {1, 7, 2047, 2048, 2049, 6000, 64 * 16 * 28 * 28}) {
    for (int k : {1, 2, 3, 5}) {
      for (auto dtype : {at::kFloat, at::kDouble}) {
        std::vector<at::Tensor> xs;
        for (int i = 0; i < k; ++i) xs.push_back(at::randn({numel}, at::TensorOptions().dtype(dtype)));
        at::Tensor expect = xs[0].clone();
        for (int i = 1; i < k; ++i) expect = expect + xs[i];
        REQUIRE(at::equal(ops::node_sum(xs), expect));
      }
    }
  }
}

TEST_CASE(bad_input_is_refused) {
  REQUIRE_THROWS_WITH(ops::node_sum({}), "no tensor arguments");  // the dispatcher refuses an empty list
  REQUIRE_THROWS_WITH(ops::node_sum({at::randn({2, 3}), at::randn({3, 2})}), "has shape");
  REQUIRE_THROWS_WITH(ops::node_sum({at::ones({2}, at::kLong)}), "float32 or float64");
}

DARTSCC_TEST_MAIN()
