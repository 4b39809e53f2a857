"""relu_dw_pw_conv (ReLU -> depthwise KxK -> pointwise 1x1) against the reference."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import tol

import dartscc_fast
from dartscc_fast import reference

# (kernel size, stride, dilation): the DARTS convolutions' units, and odd sizes
CASES = [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2), (3, 2, 2), (5, 1, 2), (5, 2, 2), (1, 1, 1)]


def make(shape=(3, 4, 7, 6), k=3, c_out=None, dtype=torch.float64, layout="contiguous"):
    n, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    x.view(-1)[::7] = 0.0  # exact zeros: relu's gradient there is 0, as in torch
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    dw = torch.randn(c, 1, k, k, dtype=torch.float64).to(dtype)
    pw = torch.randn(c_out or c, c, 1, 1, dtype=torch.float64).to(dtype)
    return x, dw, pw


def check(shape, k, stride, dilation, dtype=torch.float64, c_out=None, layout="contiguous"):
    x, dw, pw = make(shape, k, c_out, dtype, layout)
    inputs = [x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_()]
    y = dartscc_fast.relu_dw_pw_conv(x, dw, pw, stride, dilation)
    g = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, inputs, g.to(y))
    i64 = [t.detach().double().requires_grad_() for t in inputs]
    y64 = reference.relu_dw_pw_conv(*i64, stride, dilation)
    grads64 = torch.autograd.grad(y64, i64, g)
    t = tol(dtype)
    loose = dict(atol=t["atol"] * 20, rtol=t["rtol"] * 10)
    assert y.shape == y64.shape and y.dtype == dtype
    torch.testing.assert_close(y.double(), y64, **loose)
    for a, b in zip(grads, grads64):
        torch.testing.assert_close(a.double(), b, **loose)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k,stride,dilation", CASES)
def test_against_reference(k, stride, dilation, dtype):
    check((3, 4, 7, 6), k, stride, dilation, dtype)


@pytest.mark.parametrize("shape", [(2, 16, 28, 28), (5, 3, 9, 13), (1, 1, 1, 1), (2, 2, 2, 3), (4, 32, 14, 14)])
@pytest.mark.parametrize("stride", [1, 2])
def test_shapes(shape, stride):
    check(shape, 3, stride, 1, torch.float32)
    check(shape, 5, stride, 2, torch.float32)


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 3, 1), (2, 3, 1, 4)])
def test_one_pixel_wide_planes_1x1_stride_2(shape):
    check(shape, 1, 2, 1)
    check(shape, 3, 2, 1)


def test_channel_change_and_layout():
    check((3, 5, 8, 8), 3, 1, 1, c_out=7)
    check((3, 6, 9, 9), 3, 2, 1, c_out=12, layout="channels_last")


def test_empty():
    for shape in [(0, 4, 7, 6), (0, 4, 1, 1)]:
        x, dw, pw = make(shape)
        x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_()
        y = dartscc_fast.relu_dw_pw_conv(x, dw, pw, 2)
        assert y.shape == reference.relu_dw_pw_conv(x, dw, pw, 2).shape
        assert not y.abs().sum().item()
        y.sum().backward()
        assert x.grad.shape == x.shape and not dw.grad.abs().sum().item()


def test_nan_propagates_like_torch():
    x, dw, pw = make((1, 2, 5, 5))
    x[0, 0, 2, 2] = float("nan")
    y = dartscc_fast.relu_dw_pw_conv(x, dw, pw)
    assert torch.equal(y.isnan(), reference.relu_dw_pw_conv(x, dw, pw).isnan())


@pytest.mark.parametrize("stride,dilation,k", [(1, 1, 3), (2, 1, 3), (1, 2, 5), (2, 2, 3)])
def test_gradcheck(stride, dilation, k):
    x, dw, pw = make((2, 3, 6, 5), k, c_out=4)
    x = torch.where(x == 0, 0.5, x + 0.05 * torch.sign(x))  # relu's kink away from the finite differences
    inputs = [x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: dartscc_fast.relu_dw_pw_conv(*a, stride, dilation), inputs)


@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck(stride):
    x, dw, pw = make((2, 4, 7, 7), dtype=torch.float32)
    args = (x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_(), stride, 1)
    torch.library.opcheck(torch.ops.dartscc_fast.relu_dw_pw_conv.default, args)
    y = torch.ops.dartscc_fast.relu_dw_pw_conv(*args)
    torch.library.opcheck(torch.ops.dartscc_fast.relu_dw_pw_conv_backward.default,
                          (torch.randn_like(y), x.detach(), dw.detach(), pw.detach(), stride, 1))


def test_torch_compile_fullgraph():
    x, dw, pw = make((2, 4, 8, 8), dtype=torch.float32)
    inputs = [x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_()]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, dw, pw):
        return dartscc_fast.relu_dw_pw_conv(x, dw, pw, 2).square().sum()

    out = f(*inputs)
    ref = reference.relu_dw_pw_conv(*inputs, 2).square().sum()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    for a, b in zip(torch.autograd.grad(out, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_thread_count_does_not_change_the_result():
    x, dw, pw = make((8, 4, 9, 9), dtype=torch.float32)
    inputs = [x.requires_grad_(), dw.requires_grad_(), pw.requires_grad_()]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = dartscc_fast.relu_dw_pw_conv(*inputs, 1)
            results.append([y, *torch.autograd.grad(y.square().sum(), inputs)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_baseline_isa_matches():
    """The kernels compiled for the baseline ISA (DARTSCC_CPU_ISA=baseline) agree with the reference too."""
    code = ("import torch, dartscc_fast; from dartscc_fast import reference; torch.manual_seed(0)\n"
            "for k, s, d in [(3, 1, 1), (5, 2, 2)]:\n"
            "    x = torch.randn(3, 5, 11, 9, requires_grad=True); dw = torch.randn(5, 1, k, k, requires_grad=True)\n"
            "    pw = torch.randn(6, 5, 1, 1, requires_grad=True)\n"
            "    y = dartscc_fast.relu_dw_pw_conv(x, dw, pw, s, d); r = reference.relu_dw_pw_conv(x, dw, pw, s, d)\n"
            "    torch.testing.assert_close(y, r, atol=1e-4, rtol=1e-4)\n"
            "    ga, gb = torch.autograd.grad(y.sum(), [x, dw, pw]), torch.autograd.grad(r.sum(), [x, dw, pw])\n"
            "    for a, b in zip(ga, gb):\n"
            "        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)\n"
            "print('ok')\n")
    env = dict(os.environ, DARTSCC_CPU_ISA="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("args,match", [
    (dict(x=torch.randn(2, 3, 5)), r"x must have shape \[N, C, H, W\]"),
    (dict(dw=torch.randn(4, 1, 3, 3)), r"dw_weight must have shape \[C, 1, K, K\] with C=3"),
    (dict(dw=torch.randn(3, 1, 2, 2)), "odd K"),
    (dict(pw=torch.randn(5, 4, 1, 1)), r"pw_weight must have shape \[C_out, C, 1, 1\] with C=3"),
    (dict(pw=torch.randn(5, 3, 1, 1, dtype=torch.float64)), "pw_weight must have x's dtype"),
    (dict(x=torch.randn(2, 3, 5, 5).half()), "x must be float32 or float64"),
    (dict(stride=0), "stride must be >= 1"),
    (dict(dilation=0), "dilation must be >= 1"),
])
def test_errors(args, match):
    a = dict(x=torch.randn(2, 3, 5, 5), dw=torch.randn(3, 1, 3, 3), pw=torch.randn(5, 3, 1, 1), stride=1,
             dilation=1)
    a.update(args)
    with pytest.raises(RuntimeError, match=match):
        dartscc_fast.relu_dw_pw_conv(a["x"], a["dw"], a["pw"], a["stride"], a["dilation"])
