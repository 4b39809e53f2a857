"""glibc malloc tuning: applied where glibc is, a clear error for a bad threshold, the opt-out variable."""
import sys

import pytest

from dartscc_fast.cli.allocator import keep_freed_memory, tuning_enabled


def test_bad_threshold():
    with pytest.raises(ValueError, match="threshold_mb must be > 0"):
        keep_freed_memory(0)


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("1", True), (None, True)])
def test_opt_out_variable(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("DARTSCC_MALLOC_TUNING", raising=False)
    else:
        monkeypatch.setenv("DARTSCC_MALLOC_TUNING", value)
    assert tuning_enabled() is expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_applies_on_glibc():
    # whether a later block page-faults depends on the process's history (heap
    # layout, arenas), so the effect is measured in bench/, not asserted here
    assert keep_freed_memory(256)
