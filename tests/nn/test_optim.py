"""The package's Adam (dartscc_fast.nn.optim.adam): the fused step where it can, Adam's update either way."""
import pytest
import torch

from dartscc_fast.nn.optim import adam


def _params(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in [(16, 8, 3, 3), (16,), (10, 64)]]


def test_fused_on_cpu_floats_and_the_same_update_as_the_loop():
    ps, qs = _params(0), _params(0)
    fused = adam(ps, lr=1e-2, weight_decay=3e-4)
    loop = torch.optim.Adam(qs, lr=1e-2, weight_decay=3e-4)
    assert fused.defaults["fused"] is True
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(ps, qs):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # its state is Adam's: it loads into a default Adam and back (resume across versions)
    again = torch.optim.Adam(qs, lr=1e-2)
    again.load_state_dict(fused.state_dict())


def test_an_explicit_choice_is_kept():
    assert adam(_params(0), lr=1e-3, foreach=False).defaults["fused"] in (None, False)
    with pytest.raises(ValueError):
        adam(_params(0), lr=-1.0)
