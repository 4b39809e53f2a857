"""The constants Python shares with the kernels equal csrc/common/primitives.h, which the kernels compile with."""
import re
from pathlib import Path

from dartscc_fast import ops
from dartscc_fast.ops import kernel_spec

HEADER = Path(__file__).resolve().parents[2] / "csrc" / "common" / "primitives.h"


def _header():
    """(kMaxOps, {slot name: code}) as the header defines them; a slot kMaxPool is 'max_pool'."""
    text = re.sub(r"//[^\n]*", "", HEADER.read_text())
    max_ops = int(re.search(r"constexpr\s+int\s+kMaxOps\s*=\s*(\d+)\s*;", text).group(1))
    enum = re.search(r"enum\s+PrimCode\s*:\s*int64_t\s*\{([^}]*)\}", text).group(1)
    codes = {}
    for name, value in re.findall(r"k(\w+)\s*=\s*(\d+)", enum):
        codes[re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()] = int(value)
    return max_ops, codes


def test_the_header_parses():
    max_ops, codes = _header()
    assert max_ops > 0 and len(codes) >= 5 and "max_pool" in codes


def test_python_constants_equal_the_headers():
    max_ops, codes = _header()
    assert kernel_spec.MAX_OPS == max_ops
    assert kernel_spec.PRIM_CODES == codes


def test_ops_exports_the_same_constants():
    assert ops.PRIM_CODES is kernel_spec.PRIM_CODES and ops.MAX_OPS == kernel_spec.MAX_OPS
