"""The tuning switches: one checked config, changed for a block and restored, and read by the modules."""
import pytest
import torch
from torch import nn

from dartscc_fast.nn import batch_norm, tuning
from dartscc_fast.nn.tuning import TUNING, Tuning, tuned


def test_tuned_changes_for_the_block_and_restores_even_on_error():
    before = Tuning(**vars(TUNING))
    with tuned(share_pools=False, fused_conv_min_pixels=0) as t:
        assert t is TUNING and not TUNING.share_pools and TUNING.fused_conv_min_pixels == 0
    assert TUNING == before
    with pytest.raises(RuntimeError):
        with tuned(batch_norm_min_pixels=1):
            raise RuntimeError("boom")
    assert TUNING == before


@pytest.mark.parametrize("bad", [{"share_pools": 1}, {"fused_conv_min_pixels": -1}, {"conv1x1_min_pixels": 1.5},
                                 {"no_such_switch": 3}])
def test_bad_switches_raise_before_any_change(bad):
    before = Tuning(**vars(TUNING))
    with pytest.raises((ValueError, TypeError)):
        with tuned(**bad):
            pass
    assert TUNING == before


def test_the_batch_norm_switch_is_read_at_every_call():
    bn = nn.BatchNorm2d(3, affine=False).train()
    x = torch.randn(2, 3, 7, 7)  # 49 pixels: under the default
    assert tuning.TUNING.batch_norm_min_pixels > 49 and not batch_norm._applies(bn, x)
    with tuned(batch_norm_min_pixels=0):
        assert batch_norm._applies(bn, x)
    assert not batch_norm._applies(bn, x)
