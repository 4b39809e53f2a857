"""batch_norm_train and FastBatchNorm2d against torch's BatchNorm."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tol
from torch import nn

import dartscc_fast.nn.batch_norm as batch_norm_module
from dartscc_fast import ops, reference
from dartscc_fast.nn.batch_norm import FastBatchNorm2d, batch_norm, use_fast_batch_norm
from dartscc_fast.nn.tuning import TUNING
from dartscc_fast.space import get_space

SHAPES = [(64, 16, 28, 28), (5, 3, 9, 13), (2, 4, 1, 1), (1, 3, 2, 1), (3, 2, 7), (4, 6), (2, 64, 7, 7)]


def sample(shape, dtype=torch.float64):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 5  # a mean far from 0: one-pass variances would cancel
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_against_reference(shape, dtype):
    x = sample(shape, dtype).requires_grad_()
    y, mean, var = ops.batch_norm_train(x, 1e-5)
    x64 = x.detach().double().requires_grad_()
    y64, mean64, var64 = reference.batch_norm_train(x64, 1e-5)
    t = tol(dtype)
    assert y.dtype == dtype and y.is_contiguous() and mean.shape == var.shape == (shape[1],)
    torch.testing.assert_close(y.double(), y64, atol=t["atol"] * 10, rtol=t["rtol"] * 10)
    torch.testing.assert_close(mean.double(), mean64, **t)
    torch.testing.assert_close(var.double(), var64, atol=t["atol"] * 10, rtol=t["rtol"])
    assert not mean.requires_grad and not var.requires_grad
    g = torch.randn(shape, dtype=torch.float64)
    gx, = torch.autograd.grad(y, x, g.to(dtype))
    gx64, = torch.autograd.grad(y64, x64, g)
    torch.testing.assert_close(gx.double(), gx64, atol=t["atol"] * 100, rtol=t["rtol"] * 10)


def test_channels_last_input_gives_the_same_values():
    x = sample((4, 8, 6, 5), torch.float32)
    y, mean, var = ops.batch_norm_train(x.contiguous(memory_format=torch.channels_last), 1e-3)
    y0, mean0, var0 = ops.batch_norm_train(x, 1e-3)
    assert torch.equal(y, y0) and torch.equal(mean, mean0) and torch.equal(var, var0)


def test_constant_channel_and_eps():
    x = torch.full((4, 2, 3, 3), 7.0)
    x[:, 1] = torch.arange(36.0).view(4, 3, 3)
    for eps in (1e-5, 0.5):
        y, mean, var = ops.batch_norm_train(x, eps)
        # a constant channel normalises to exactly 0 (torch's float32 kernel leaves ~3e-5 there)
        assert mean[0] == 7.0 and var[0] == 0.0 and torch.equal(y[:, 0], torch.zeros_like(y[:, 0]))
        torch.testing.assert_close(y[:, 1], F.batch_norm(x, None, None, training=True, eps=eps)[:, 1])


def test_thread_count_does_not_change_results():
    x = sample((16, 8, 14, 14), torch.float32)
    g = torch.randn_like(x)
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xr = x.clone().requires_grad_()
            y, mean, var = ops.batch_norm_train(xr, 1e-5)
            got.append((y, mean, var, torch.autograd.grad(y, xr, g)[0]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*got):
        assert torch.equal(a, b)


def test_gradcheck():
    x = sample((3, 2, 3, 4)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.batch_norm_train(t, 1e-3)[0], (x,))


def test_opcheck():
    x = sample((4, 3, 5, 5), torch.float32).requires_grad_()
    torch.library.opcheck(torch.ops.dartscc_fast.batch_norm_train.default, (x, 1e-5))
    y, mean, var = torch.ops.dartscc_fast.batch_norm_train(x, 1e-5)
    torch.library.opcheck(torch.ops.dartscc_fast.batch_norm_train_backward.default,
                          (torch.randn_like(y), x.detach(), mean, var, 1e-5))


def test_compile_fullgraph():
    x = sample((4, 3, 5, 5), torch.float32)
    f = torch.compile(lambda t: ops.batch_norm_train(t, 1e-5)[0].square().sum(), fullgraph=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    f(xa).backward()
    ops.batch_norm_train(xb, 1e-5)[0].square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(3),), r"x must have shape \[N, C, \*\]"),
    ((torch.randn(1, 3, 1, 1),), "more than 1 value per channel"),
    ((torch.randn(0, 3, 2, 2),), "more than 1 value per channel"),
    ((torch.randn(2, 3, 2, 2, dtype=torch.float16),), "float32 or float64"),
    ((torch.randn(2, 3, 2, 2), float("nan")), "eps must be finite and > 0"),
    ((torch.randn(2, 3, 2, 2), 0.0), "eps must be finite and > 0"),
])
def test_bad_input(args, match):
    with pytest.raises(RuntimeError, match=match):
        ops.batch_norm_train(*args)


def test_backward_op_checks_its_arguments():
    x = torch.randn(2, 3, 2, 2)
    y, mean, var = ops.batch_norm_train(x)
    with pytest.raises(RuntimeError, match=r"var must have shape \[3\]"):
        torch.ops.dartscc_fast.batch_norm_train_backward(y, x, mean, var[:2], 1e-5)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.dartscc_fast.batch_norm_train_backward(y[:1], x, mean, var, 1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_module_matches_nn_batchnorm(momentum, track, monkeypatch):
    monkeypatch.setattr(TUNING, "batch_norm_min_pixels", 0)  # these small planes through the kernel too
    calls = []
    monkeypatch.setattr(batch_norm_module, "_fast",
                        lambda bn, x, f=batch_norm_module._fast: calls.append(1) or f(bn, x))
    torch_bn = nn.BatchNorm2d(6, affine=False, momentum=momentum, track_running_stats=track).double()
    fast_bn = copy.deepcopy(torch_bn)
    assert use_fast_batch_norm(fast_bn) == 1 and type(fast_bn) is FastBatchNorm2d
    for step in range(3):
        x = sample((5, 6, 4, 3)) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = torch_bn(xa), fast_bn(xb)
        torch.testing.assert_close(yb, ya)
        g = torch.randn_like(ya)
        torch.testing.assert_close(torch.autograd.grad(yb, xb, g)[0], torch.autograd.grad(ya, xa, g)[0])
    assert len(calls) == 3
    sa, sb = torch_bn.state_dict(), fast_bn.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k])
    torch_bn.eval(), fast_bn.eval()  # eval mode: torch's forward with the running statistics
    x = sample((2, 6, 4, 3))
    torch.testing.assert_close(fast_bn(x), torch_bn(x))


def test_module_falls_back_where_the_kernel_does_not_apply():
    x = sample((4, 3, 5, 5), torch.float32)
    affine = FastBatchNorm2d(3)  # affine: torch's forward
    torch.testing.assert_close(affine(x), F.batch_norm(x, None, None, affine.weight, affine.bias, training=True))
    bn = FastBatchNorm2d(3, affine=False)
    cl = x.contiguous(memory_format=torch.channels_last)
    y = bn(cl)
    assert y.is_contiguous(memory_format=torch.channels_last)  # torch keeps the layout; so does the fallback
    torch.testing.assert_close(y, F.batch_norm(x, None, None, training=True))
    assert bn(torch.randn(0, 3, 2, 2)).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError):
        bn(torch.randn(4, 3, 5))  # nn.BatchNorm2d's own 4-D check


def test_small_planes_go_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(batch_norm_module, "_fast",
                        lambda bn, x, f=batch_norm_module._fast: calls.append(1) or f(bn, x))
    bn = FastBatchNorm2d(3, affine=False)
    small, big = sample((4, 3, 7, 7), torch.float32), sample((4, 3, 14, 14), torch.float32)
    torch.testing.assert_close(bn(small), F.batch_norm(small, None, None, training=True))
    assert calls == []
    torch.testing.assert_close(bn(big), F.batch_norm(big, None, None, training=True))
    assert calls == [1]


def test_batch_norm_function_respects_other_modules(monkeypatch):
    monkeypatch.setattr(TUNING, "batch_norm_min_pixels", 0)
    class Custom(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    x = sample((4, 3, 5, 5), torch.float32)
    custom = Custom(3, affine=False)
    torch.testing.assert_close(batch_norm(custom, x), 2 * F.batch_norm(x, None, None, training=True))
    plain = nn.BatchNorm2d(3, affine=False)
    torch.testing.assert_close(batch_norm(plain, x), F.batch_norm(x, None, None, training=True))
    assert plain.num_batches_tracked.item() == 1


def test_fuse_preprocessing_converts_the_search_networks_batchnorms():
    net = get_space("fmnist-paper").supernet(fast=True)
    assert any(type(m) is FastBatchNorm2d for m in net.modules())
    assert all(m.affine for m in net.modules() if type(m) is nn.BatchNorm2d)  # only the stem's affine one stays
