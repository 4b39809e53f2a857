"""Load the compiled extension, and refuse a build made for another torch."""
from __future__ import annotations

import torch

_REINSTALL = ("Rebuild/reinstall dartscc_fast against the torch you have now: "
              "`pip install --no-build-isolation --force-reinstall --no-deps .` in its source tree.")


def _load_error(e: ImportError) -> ImportError:
    """What to tell the user when the compiled extension does not load."""
    if "undefined symbol" in str(e) or "cannot open shared object" in str(e):
        return ImportError("dartscc_fast's compiled extension does not match the installed torch %s (%s). %s"
                           % (torch.__version__, e, _REINSTALL))
    return ImportError("dartscc_fast's compiled extension is missing (%s). The package must be "
                       "installed with `pip install --no-build-isolation .`, not imported from "
                       "an unbuilt source tree." % e)


try:
    from dartscc_fast import _C  # loading it registers the ops
except ImportError as _e:
    raise _load_error(_e) from None


def _check_build():
    """Refuse a build made for another torch or CUDA."""
    built = _C.torch_version
    if built.split("+")[0] != torch.__version__.split("+")[0]:
        raise ImportError("dartscc_fast was built against torch %s but torch %s is installed. %s"
                          % (built, torch.__version__, _REINSTALL))
    if _C.with_cuda and torch.version.cuda is not None and _C.cuda_version != torch.version.cuda:
        raise ImportError("dartscc_fast was built with CUDA %s but torch uses CUDA %s. %s"
                          % (_C.cuda_version, torch.version.cuda, _REINSTALL))


_check_build()

#: What the extension was built with: version, torch, CUDA (None for a CPU-only build), OpenMP.
BUILD_INFO = {
    "version": _C.__version__,
    "torch": _C.torch_version,
    "cuda": _C.cuda_version,
    "openmp": _C.with_openmp,
}
