"""hard_mixed_sum: the GDAS path, each op on its own samples, scattered back in one kernel."""
import pytest
import torch
from conftest import DEVICES, tol

import dartscc_fast
from dartscc_fast import ops, reference


def make(n, k, per_sample, dtype=torch.float64, device="cpu", rest=(3, 4, 5)):
    index = torch.randint(0, k, (n,), device=device)
    groups = ops.hard_groups(index, k)
    outs = [torch.randn((len(g),) + rest, dtype=dtype, device=device) for g in groups]
    w = torch.nn.functional.one_hot(index if per_sample else index[:1].expand(n), k).to(dtype)
    if not per_sample:
        w = w[0] if n else torch.nn.functional.one_hot(torch.tensor(0), k).to(dtype)
        index = index[:1].expand(n).contiguous() if n else index
        groups = ops.hard_groups(index, k)
        outs = [torch.randn((len(g),) + rest, dtype=dtype, device=device) for g in groups]
    # straight-through values are one-hot up to rounding: make them so
    soft = torch.softmax(torch.randn(w.shape, dtype=dtype), -1)
    w = (w - soft + soft).to(device)
    return outs, w, index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("n,k", [(6, 3), (9, 8), (1, 1), (0, 3)])
def test_matches_reference(device, dtype, per_sample, n, k):
    outs, w, index = make(n, k, per_sample, dtype, device)
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()
    y = dartscc_fast.hard_mixed_sum(outs, w, index)
    o64 = [o.detach().double().requires_grad_() for o in outs]
    w64 = w.detach().double().requires_grad_()
    y64 = reference.hard_mixed_sum(o64, w64, index)
    torch.testing.assert_close(y.double(), y64, **tol(dtype))
    if n:
        g = torch.randn_like(y64)
        grads = torch.autograd.grad(y, outs + [w], g.to(y), allow_unused=True)
        grads64 = torch.autograd.grad(y64, o64 + [w64], g, allow_unused=True)
        for a, b, o in zip(grads, grads64, outs + [w]):
            b = torch.zeros_like(o, dtype=torch.float64) if b is None else b
            torch.testing.assert_close(a.double(), b, atol=tol(dtype)["atol"] * 50, rtol=tol(dtype)["rtol"] * 4)


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck(per_sample):
    outs, w, index = make(7, 3, per_sample)
    inputs = [o.requires_grad_() for o in outs] + [w.requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: dartscc_fast.hard_mixed_sum(list(a[:-1]), a[-1], index), inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck(device, per_sample):
    outs, w, index = make(7, 3, per_sample, torch.float32, device)
    outs = [o.requires_grad_() for o in outs]
    torch.library.opcheck(torch.ops.dartscc_fast.hard_mixed_sum.default, (outs, w.requires_grad_(), index))
    torch.library.opcheck(torch.ops.dartscc_fast.hard_mixed_sum_backward.default,
                          (torch.randn(7, 3, 4, 5, device=device), [o.detach() for o in outs], w.detach(), index))


def test_errors():
    outs, w, index = make(6, 3, True)
    bad = index.clone()
    bad[0] = 5
    with pytest.raises(RuntimeError, match=r"index\[0\] = 5 is not in \[0, 3\)"):
        dartscc_fast.hard_mixed_sum(outs, w, bad)
    swapped = index.clone()
    swapped[swapped == index[0]] = (index[0] + 1) % 3
    with pytest.raises(RuntimeError, match="index draws op"):
        dartscc_fast.hard_mixed_sum(outs, w, swapped)
    with pytest.raises(RuntimeError, match="index must be a 1-D int64"):
        dartscc_fast.hard_mixed_sum(outs, w, index.int())
    with pytest.raises(RuntimeError, match="samples in all but index has"):
        dartscc_fast.hard_mixed_sum(outs, w, index[:5])
