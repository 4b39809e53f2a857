"""Build dartscc_fast: the CPU kernels always, the CUDA kernels when torch has CUDA.

Environment switches (as in pytorch_scatter):
  FORCE_CUDA=1      build the CUDA kernels or fail
  FORCE_ONLY_CPU=1  never build the CUDA kernels
  MAX_JOBS=N        parallel compile jobs (default 2)
  DARTSCC_DEBUG=1   -O0 -g, for gdb and sanitizers
"""
import glob
import os
import shutil
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = open(os.path.join(HERE, "VERSION")).read().strip()


def _flag(name):
    return os.getenv(name, "0") == "1"


def _want_cuda():
    if _flag("FORCE_ONLY_CPU"):
        return False, "FORCE_ONLY_CPU=1"
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    torch_cuda = torch.version.cuda is not None
    if _flag("FORCE_CUDA"):
        if not torch_cuda:
            sys.exit("FORCE_CUDA=1 but this torch (%s) was built without CUDA; "
                     "install a CUDA build of torch first." % torch.__version__)
        if not has_nvcc:
            sys.exit("FORCE_CUDA=1 but nvcc was not found; set CUDA_HOME.")
        return True, "FORCE_CUDA=1"
    if not torch_cuda:
        return False, "torch %s has no CUDA" % torch.__version__
    if not has_nvcc:
        return False, "nvcc not found"
    return True, "torch CUDA %s and nvcc found" % torch.version.cuda


def extensions():
    with_cuda, why = _want_cuda()
    debug = _flag("DARTSCC_DEBUG")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    define_macros = [("DARTSCC_VERSION", '"%s"' % VERSION),
                     ("DARTSCC_TORCH_VERSION", '"%s"' % torch.__version__)]
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-std=c++20"] + (["-fopenmp"] if sys.platform != "darwin" else [])
    extra_link = ["-fopenmp"] if sys.platform != "darwin" else []
    kwargs = dict(extra_link_args=extra_link)
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        define_macros += [("WITH_CUDA", None), ("DARTSCC_CUDA_VERSION", '"%s"' % torch.version.cuda)]
        nvcc = opt + ["-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
        ext = CUDAExtension("dartscc_fast._C", sources, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
        archs = os.getenv("TORCH_CUDA_ARCH_LIST", "(torch default)")
    else:
        ext = CppExtension("dartscc_fast._C", sources, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, **kwargs)
        archs = "-"
    print("dartscc_fast %s build: CPU kernels: yes (OpenMP: %s); CUDA kernels: %s (%s); "
          "CUDA archs: %s; torch %s; mode: %s"
          % (VERSION, "yes" if extra_link else "no", "yes" if with_cuda else "no", why,
             archs, torch.__version__, "debug" if debug else "release"), flush=True)
    return [ext]


os.environ.setdefault("MAX_JOBS", "2")

setup(
    name="dartscc_fast",
    version=VERSION,
    description="Hardware-aware differentiable architecture search with fused C++/CUDA mixed-op kernels",
    packages=find_packages(include=["dartscc_fast", "dartscc_fast.*"]),
    package_data={"dartscc_fast": ["data/fashion-mnist/*", "data/*.json"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={"plot": ["matplotlib"], "onnx": ["onnx", "onnxruntime"], "openvino": ["onnx", "openvino"],
                    "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff", "onnx", "onnxruntime", "openvino"]},
    entry_points={"console_scripts": ["dartscc-fast=dartscc_fast.cli:main"]},
)
