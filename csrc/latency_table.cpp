// LatencyTable: a latency lookup table that lives in the extension, as a torch
// custom class (torch.classes.dartscc_fast.LatencyTable) holding a hash map
// from a configuration key (see dartscc_fast/latency/table.py, e.g.
// "sep_conv_3x3:cin16:cout16:h28:w28:s1:n64:float32:cpu") to a time in the
// table's unit.
//
// lookup_batch(keys, k, fallback) fills L [E, k] (float64, CPU) for a whole
// supernet in one call: keys lists the E * k configurations row by row; an
// empty key is a candidate with no cost ('none'). A key not in the table is
// an error naming it, unless `fallback` ([E, k] float64) holds a finite value
// for that slot (Python computes those estimates and warns).
//
// The same in two steps, for a search that needs L every step: resolve(keys)
// hashes the strings once into slots (an int64 tensor), and gather(slots, k)
// then fills L without touching a string. The map lives in host memory; L is
// a small tensor, moved to the GPU once by the caller.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace dartscc {

struct LatencyTable : torch::CustomClassHolder {
  // key -> slot in `values`: a key keeps its slot for the table's lifetime, so
  // slots resolved once (resolve) stay valid for every later gather.
  std::unordered_map<std::string, int64_t> slots;
  std::vector<double> values;
  std::vector<std::string> names;

  static constexpr int64_t kNoCost = -1;   // the empty key: a candidate with no cost ('none')
  static constexpr int64_t kMissing = -2;  // a key the table lacks

  static void check_value(const char* method, const std::string& key, double value) {
    TORCH_CHECK(std::isfinite(value) && value >= 0, "LatencyTable.", method, ": the latency of '", key,
                "' must be finite and >= 0, got ", value);
    TORCH_CHECK(!key.empty(), "LatencyTable.", method,
                ": a key must not be empty (the empty key stands for a candidate with no cost)");
  }

  void set(const std::string& key, double value) {
    auto it = slots.find(key);
    if (it != slots.end()) {
      values[it->second] = value;
    } else {
      slots.emplace(key, static_cast<int64_t>(values.size()));
      values.push_back(value);
      names.push_back(key);
    }
  }

  void insert(const std::string& key, double value) {
    check_value("insert", key, value);
    set(key, value);
  }

  void insert_many(const std::vector<std::string>& keys, const std::vector<double>& vals) {
    TORCH_CHECK(keys.size() == vals.size(), "LatencyTable.insert_many: got ", keys.size(), " keys but ",
                vals.size(), " values");
    for (size_t i = 0; i < keys.size(); ++i) check_value("insert_many", keys[i], vals[i]);
    slots.reserve(slots.size() + keys.size());
    for (size_t i = 0; i < keys.size(); ++i) set(keys[i], vals[i]);
  }

  double lookup(const std::string& key) const {
    if (key.empty()) return 0.0;
    auto it = slots.find(key);
    TORCH_CHECK(it != slots.end(), "LatencyTable.lookup: no latency for configuration '", key,
                "' (the table has ", values.size(),
                " entries); measure it with `dartscc-fast profile` or ask for a fallback estimate");
    return values[it->second];
  }

  bool contains(const std::string& key) const { return key.empty() || slots.count(key) > 0; }

  int64_t size() const { return static_cast<int64_t>(values.size()); }

  std::vector<std::string> keys() const {
    std::vector<std::string> out = names;
    std::sort(out.begin(), out.end());
    return out;
  }

  // The distinct keys of `keys` that the table lacks, in first-seen order.
  std::vector<std::string> missing(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const auto& key : keys)
      if (!contains(key) && std::find(out.begin(), out.end(), key) == out.end()) out.push_back(key);
    return out;
  }

  // Hash every key once: its slot, -1 for '' (no cost), -2 for a missing key
  // (an error naming it unless allow_missing).
  at::Tensor resolve(const std::vector<std::string>& keys, bool allow_missing) const {
    const int64_t n = static_cast<int64_t>(keys.size());
    at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kLong));
    int64_t* o = out.mutable_data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (keys[i].empty()) {
        o[i] = kNoCost;
        continue;
      }
      auto it = slots.find(keys[i]);
      TORCH_CHECK(it != slots.end() || allow_missing, "LatencyTable: no latency for configuration '", keys[i],
                  "' (key ", i, "; the table has ", values.size(),
                  " entries); measure it with `dartscc-fast profile` or ask for a fallback estimate");
      o[i] = it != slots.end() ? it->second : kMissing;
    }
    return out;
  }

  // L [n / k, k] (float64, CPU) from resolved slots; a missing slot takes
  // `fallback`'s value (float64, n values) where that is finite.
  at::Tensor gather(const at::Tensor& slot_ids, int64_t k, const c10::optional<at::Tensor>& fallback) const {
    TORCH_CHECK(slot_ids.device().is_cpu() && slot_ids.scalar_type() == at::kLong && slot_ids.dim() == 1,
                "LatencyTable.gather: slots must be a 1-D CPU int64 tensor (from resolve), got ",
                slot_ids.scalar_type(), " ", slot_ids.sizes(), " on ", slot_ids.device());
    const int64_t n = slot_ids.size(0);
    TORCH_CHECK(k >= 1, "LatencyTable: k (candidates per edge) must be >= 1, got ", k);
    TORCH_CHECK(n % k == 0, "LatencyTable: got ", n, " keys, not a multiple of k=", k,
                " (keys must list every edge's k candidates, row by row)");
    at::Tensor fb;
    const double* fbp = nullptr;
    if (fallback.has_value() && fallback->defined()) {
      TORCH_CHECK(fallback->device().is_cpu() && fallback->scalar_type() == at::kDouble && fallback->numel() == n,
                  "LatencyTable: fallback must be a CPU float64 tensor of ", n, " values ([", n / k, ", ", k,
                  "]), got ", fallback->scalar_type(), " ", fallback->sizes(), " on ", fallback->device());
      fb = fallback->contiguous();
      fbp = fb.const_data_ptr<double>();
    }
    at::Tensor ids = slot_ids.contiguous();
    const int64_t* s = ids.const_data_ptr<int64_t>();
    at::Tensor L = at::empty({n / k, k}, at::TensorOptions().dtype(at::kDouble));
    double* out = L.mutable_data_ptr<double>();
    const int64_t n_values = static_cast<int64_t>(values.size());
    for (int64_t i = 0; i < n; ++i) {
      const int64_t slot = s[i];
      if (slot >= 0) {
        TORCH_CHECK(slot < n_values, "LatencyTable.gather: slot ", slot, " is out of range (", n_values,
                    " entries); slots must come from this table's resolve");
        out[i] = values[slot];
      } else if (slot == kNoCost) {
        out[i] = 0.0;
      } else {
        TORCH_CHECK(slot == kMissing && fbp != nullptr && std::isfinite(fbp[i]),
                    "LatencyTable: no latency for key ", i, " (edge ", i / k, ", candidate ", i % k,
                    ") and no fallback estimate for it");
        out[i] = fbp[i];
      }
    }
    return L;
  }

  // resolve + gather in one call: a missing key is an error naming it unless
  // `fallback` holds a finite estimate for its slot.
  at::Tensor lookup_batch(const std::vector<std::string>& keys, int64_t k,
                          const c10::optional<at::Tensor>& fallback) const {
    const bool has_fb = fallback.has_value() && fallback->defined();
    at::Tensor ids = resolve(keys, has_fb);
    if (has_fb && fallback->device().is_cpu() && fallback->scalar_type() == at::kDouble &&
        fallback->numel() == static_cast<int64_t>(keys.size())) {
      at::Tensor fb = fallback->contiguous();
      const double* f = fb.const_data_ptr<double>();
      const int64_t* s = ids.const_data_ptr<int64_t>();
      for (size_t i = 0; i < keys.size(); ++i)
        TORCH_CHECK(s[i] != kMissing || std::isfinite(f[i]),
                    "LatencyTable.lookup_batch: no latency for configuration '", keys[i], "' (edge ",
                    static_cast<int64_t>(i) / k, ", candidate ", static_cast<int64_t>(i) % k,
                    ") and no fallback estimate for it");
    }
    return gather(ids, k, fallback);
  }
};

using TableState = std::tuple<std::vector<std::string>, std::vector<double>>;

TORCH_LIBRARY_FRAGMENT(dartscc_fast, m) {
  m.class_<LatencyTable>("LatencyTable")
      .def(torch::init<>())
      .def("insert", &LatencyTable::insert)
      .def("insert_many", &LatencyTable::insert_many)
      .def("lookup", &LatencyTable::lookup)
      .def("contains", &LatencyTable::contains)
      .def("size", &LatencyTable::size)
      .def("keys", &LatencyTable::keys)
      .def("missing", &LatencyTable::missing)
      .def("resolve", &LatencyTable::resolve)
      .def("gather", &LatencyTable::gather)
      .def("lookup_batch", &LatencyTable::lookup_batch)
      // So a module holding a table can be deep-copied, pickled and scripted.
      .def_pickle(
          [](const c10::intrusive_ptr<LatencyTable>& self) -> TableState {
            std::vector<std::string> keys = self->keys();
            std::vector<double> values;
            values.reserve(keys.size());
            for (const auto& key : keys) values.push_back(self->values[self->slots.at(key)]);
            return TableState(std::move(keys), std::move(values));
          },
          [](TableState state) -> c10::intrusive_ptr<LatencyTable> {
            auto t = c10::make_intrusive<LatencyTable>();
            t->insert_many(std::get<0>(state), std::get<1>(state));
            return t;
          });
}

}  // namespace dartscc
