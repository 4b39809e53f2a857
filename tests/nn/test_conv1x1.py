"""Conv1x1 (dartscc_fast.nn.conv1x1): nn.Conv2d's values and gradients with the matrix-product backward."""
import pytest
import torch
from torch import nn

from dartscc_fast import fuse_preprocessing
from dartscc_fast.nn.conv1x1 import Conv1x1, _Conv1x1, conv1x1, use_conv1x1
from dartscc_fast.nn.tuning import TUNING
from dartscc_fast.space import get_space


def _pair(ci, co, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    ref = nn.Conv2d(ci, co, 1, bias=False, **kw).to(dtype)
    ours = nn.Conv2d(ci, co, 1, bias=False, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("shape", [(2, 3, 5, 14, 14), (4, 48, 16, 28, 28), (3, 7, 2, 15, 20), (1, 1, 1, 14, 14)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_conv2d(shape, dtype):
    n, ci, co, h, w = shape
    ref, ours = _pair(ci, co, dtype)
    assert use_conv1x1(ours) == 1 and type(ours) is Conv1x1
    x = torch.randn(n, ci, h, w, dtype=dtype, requires_grad=True)
    g = torch.randn(n, co, h, w, dtype=dtype)
    outs, grads = [], []
    for m in (ref, ours):
        x.grad = None
        y = m(x)
        y.backward(g)
        outs.append(y)
        grads.append((x.grad.clone(), m.weight.grad.clone()))
    assert ours(x).grad_fn.name().startswith("_Conv1x1")
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(outs[1], outs[0], **tol)
    torch.testing.assert_close(grads[1][0], grads[0][0], **tol)
    torch.testing.assert_close(grads[1][1], grads[0][1], **tol)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 14, 14, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv1x1, (x, w))
    # only what needs a gradient gets one
    x2 = x.detach()
    conv1x1(x2, w).sum().backward()
    assert x2.grad is None and w.grad is not None


@pytest.mark.parametrize("case", ["small_plane", "channels_last", "no_grad", "bias", "stride", "half", "eval_no_grad"])
def test_falls_back_to_conv2d_where_it_does_not_apply(case):
    kw = {"bias": True} if case == "bias" else {"stride": 2} if case == "stride" else {}
    conv = nn.Conv2d(8, 4, 1, **{"bias": False, **kw})
    ref = nn.Conv2d(8, 4, 1, **{"bias": False, **kw})
    ref.load_state_dict(conv.state_dict())
    conv.__class__ = Conv1x1  # also the modules use_conv1x1 would skip
    side = 7 if case == "small_plane" else 14
    assert side * side < TUNING.conv1x1_min_pixels or case != "small_plane"
    x = torch.randn(2, 8, side, side, requires_grad=True)
    if case == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    if case == "half":
        conv, ref, x = conv.bfloat16(), ref.bfloat16(), x.detach().bfloat16().requires_grad_()
    ctx = torch.no_grad() if case in ("no_grad", "eval_no_grad") else torch.enable_grad()
    with ctx:
        y = conv(x)
        assert y.grad_fn is None or not y.grad_fn.name().startswith("_Conv1x1")
        torch.testing.assert_close(y, ref(x))


def test_use_conv1x1_changes_only_the_eligible_convs_and_keeps_the_state():
    model = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                          nn.Conv2d(8, 8, 1, bias=True), nn.Conv2d(8, 8, 1, stride=2, bias=False),
                          nn.Conv2d(8, 8, 1, groups=8, bias=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_conv1x1(model) == 1
    assert [type(m) for m in model] == [Conv1x1, nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert use_conv1x1(model) == 0  # idempotent
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_search_network_uses_it_for_its_preprocessing():
    net = get_space("fmnist-paper").supernet(fast=True)
    convs = [m for m in net.modules() if type(m) is Conv1x1]
    assert convs, "fuse_preprocessing should make the cells' 1x1 preprocessing convolutions Conv1x1"
    assert fuse_preprocessing(net) == 0 and all(type(m) is Conv1x1 for m in convs)


def test_bad_input():
    with pytest.raises(ValueError, match="conv1x1"):
        conv1x1(torch.randn(2, 3, 4, 4), torch.randn(4, 5, 1, 1))
    with pytest.raises(ValueError, match="conv1x1"):
        conv1x1(torch.randn(2, 3, 4, 4), torch.randn(4, 3, 3, 3))


def test_double_backward_is_refused_clearly():
    x = torch.randn(1, 2, 14, 14, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(_Conv1x1.apply(x, w).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|not differentiable|twice"):
        gx.sum().backward()
