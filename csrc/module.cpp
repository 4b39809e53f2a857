// The Python module `dartscc_fast._C`: loading it registers the ops; it also
// reports what it was built against so the package can refuse a stale build.
#include <torch/extension.h>

#ifndef DARTSCC_VERSION
#define DARTSCC_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "dartscc_fast compiled kernels";
  m.attr("__version__") = DARTSCC_VERSION;
  m.attr("torch_version") = DARTSCC_TORCH_VERSION;
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_version") = DARTSCC_CUDA_VERSION;
#else
  m.attr("with_cuda") = false;
  m.attr("cuda_version") = py::none();
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
