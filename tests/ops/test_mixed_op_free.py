"""mixed_op_free: parameter-free candidates fused into the weighted sum, against the reference."""
import itertools
import os
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, tol

import dartscc_fast
from dartscc_fast import reference

FREE = ["none", "identity", "max_pool", "avg_pool"]


# one max pool's eval-mode statistics: mean 0, variance 1
EVAL_STATS = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)

def run(prims, stride, per_sample, shape=(3, 4, 7, 6), dtype=torch.float64, device="cpu", layout="contiguous",
        eval_stats=False):
    n, c, h, w = shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device)
    params = [torch.randn(n, c, ho, wo, dtype=torch.float64).to(dtype=dtype, device=device)
              for p in prims if p == "param"]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        params = [p.contiguous(memory_format=torch.channels_last) for p in params]
    k = len(prims)
    weights = torch.randn((n, k) if per_sample else (k,), dtype=torch.float64).to(dtype=dtype, device=device)
    n_pool = sum(p.endswith("pool") for p in prims)
    stats = None
    if eval_stats:
        stats = torch.stack([torch.randn(c), torch.rand(c) + 0.5], 0).expand(n_pool, 2, c).contiguous()
        stats = stats.to(device=device, dtype=torch.float32 if dtype in (torch.half, torch.bfloat16) else dtype)
    return x, params, weights, stats


def check(prims, stride, per_sample, dtype=torch.float64, device="cpu", layout="contiguous", shape=(3, 4, 7, 6),
          eval_stats=False):
    x, params, w, stats = run(prims, stride, per_sample, shape, dtype, device, layout, eval_stats)
    inputs = [x.requires_grad_(), *[p.requires_grad_() for p in params], w.requires_grad_()]
    y, st = dartscc_fast.mixed_op_free(x, params, w, prims, stride, 1e-5, stats)
    g = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, inputs, g.to(y), allow_unused=True)
    i64 = [t.detach().double().requires_grad_() for t in inputs]
    y64 = reference.mixed_op_free(i64[0], i64[1:-1], i64[-1], prims, stride, 1e-5,
                                  None if stats is None else stats.double())
    grads64 = torch.autograd.grad(y64, i64, g, allow_unused=True)
    t = tol(dtype)
    loose = dict(atol=t["atol"] * 20, rtol=t["rtol"] * 10)
    torch.testing.assert_close(y.double(), y64, **loose)
    for a, b, inp in zip(grads, grads64, inputs):
        b = torch.zeros_like(inp, dtype=torch.float64) if b is None else b
        torch.testing.assert_close(a.double(), b, **loose)
    if layout == "channels_last" and y.numel():
        assert y.is_contiguous(memory_format=torch.channels_last)
    return y, st


# identity exists at stride 1 only: at stride 2 DARTS uses FactorizedReduce, a param slot
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("prim,stride", [(p, s) for p in FREE for s in (1, 2) if (p, s) != ("identity", 2)])
def test_each_primitive(device, stride, per_sample, prim):
    check(["param", prim], stride, per_sample, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(3, 4, 7, 6), (2, 3, 28, 28), (2, 1, 1, 1), (5, 2, 2, 3)])
def test_darts_space(device, dtype, layout, stride, shape):
    prims = ["none", "max_pool", "avg_pool", "identity" if stride == 1 else "param", "param", "param"]
    check(prims, stride, True, dtype, device, layout, shape)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("eval_stats", [False, True])
def test_channel_too_large_to_keep_pools(stride, eval_stats):
    """A channel whose pools (2 slots x 3 samples x 900 x 900 > 2^22 elements) are recomputed, not kept."""
    prims = ["max_pool", "avg_pool", "identity" if stride == 1 else "param"]
    check(prims, stride, True, torch.float32, shape=(3, 2, 900, 900), eval_stats=eval_stats)


def test_thread_count_does_not_change_the_result():
    prims = ["none", "max_pool", "avg_pool", "identity", "param"]
    x, params, w, _ = run(prims, 1, True, shape=(6, 5, 9, 8), dtype=torch.float32)
    inputs = [x.requires_grad_(), *[p.requires_grad_() for p in params], w.requires_grad_()]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y, st = dartscc_fast.mixed_op_free(x, params, w, prims, 1, 1e-5, None)
            results.append([y, st, *torch.autograd.grad(y.square().sum(), inputs)])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_baseline_isa_matches():
    """The kernels compiled for the baseline ISA (DARTSCC_CPU_ISA=baseline) agree with the reference too."""
    code = ("import sys; sys.path[:0] = ['tests', 'tests/ops']; import torch; torch.manual_seed(0)\n"
            "from test_mixed_op_free import check\n"
            "for stride in (1, 2):\n"
            "    prims = ['none', 'max_pool', 'avg_pool', 'identity' if stride == 1 else 'param', 'param']\n"
            "    for dtype in (torch.float32, torch.float64):\n"
            "        check(prims, stride, True, dtype, shape=(3, 4, 9, 8))\n"
            "print('ok')\n")
    env = dict(os.environ, DARTSCC_CPU_ISA="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("device", DEVICES)
def test_eval_stats(device):
    y, st = check(["param", "max_pool", "avg_pool"], 1, False, device=device, eval_stats=True)
    assert st.shape == (2, 2, 4)


def test_batch_stats_returned():
    x, params, w, _ = run(["max_pool", "avg_pool"], 2, False)
    _, st = dartscc_fast.mixed_op_free(x, params, w, ["max_pool", "avg_pool"], 2)
    p = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(st[0, 0], p.mean((0, 2, 3)))
    torch.testing.assert_close(st[0, 1], p.var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x, params, w, _ = run(["param", "max_pool", "identity"], 1, False, shape=(0, 3, 5, 5), device=device)
    x.requires_grad_()
    y, st = dartscc_fast.mixed_op_free(x, params, w.requires_grad_(), ["param", "max_pool", "identity"], 1)
    assert y.shape == (0, 3, 5, 5)
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    assert gx.shape == x.shape and (gw == 0).all()


def test_max_pool_ties_and_nan_follow_torch():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)  # all ties
    w = torch.ones(1, dtype=torch.float64)
    y, _ = dartscc_fast.mixed_op_free(x, [], w, ["max_pool"], 1, 1e-5, EVAL_STATS)
    (gx,) = torch.autograd.grad(y.sum(), x)
    ref = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    (gref,) = torch.autograd.grad(ref.sum() / (1 + 1e-5) ** 0.5, x)
    torch.testing.assert_close(gx, gref)
    # an all -inf window: the gradient goes to its first pixel, as torch sends it
    xi = torch.full((1, 1, 4, 4), float("-inf"), dtype=torch.float64, requires_grad=True)
    y, _ = dartscc_fast.mixed_op_free(xi, [], w, ["max_pool"], 1, 1e-5, EVAL_STATS)
    (gx,) = torch.autograd.grad(y, xi, torch.ones_like(y))
    (gref,) = torch.autograd.grad(torch.nn.functional.max_pool2d(xi, 3, 1, 1), xi,
                                  torch.ones(1, 1, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(gx, gref / (1 + 1e-5) ** 0.5)
    xn = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    xn[0, 0, 1, 1] = float("nan")
    y, _ = dartscc_fast.mixed_op_free(xn, [], w, ["max_pool"], 1, 1e-5, EVAL_STATS)
    assert torch.equal(y.isnan(), torch.nn.functional.max_pool2d(xn, 3, 1, 1).isnan())


@pytest.mark.parametrize("stride,per_sample", list(itertools.product([1, 2], [False, True])))
def test_gradcheck(stride, per_sample):
    prims = ["param", "max_pool", "avg_pool", "none"] + (["identity"] if stride == 1 else [])
    x, params, w, _ = run(prims, stride, per_sample, shape=(3, 2, 5, 4))
    inputs = [x.requires_grad_(), *[p.requires_grad_() for p in params], w.requires_grad_()]
    f = lambda x, *r: dartscc_fast.mixed_op_free(x, list(r[:-1]), r[-1], prims, stride)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eval_stats", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, eval_stats, layout):
    prims = ["param", "max_pool", "avg_pool", "identity", "none"]
    x, params, w, stats = run(prims, 1, True, dtype=torch.float32, device=device, layout=layout, eval_stats=eval_stats)
    codes = dartscc_fast.ops.prim_codes(prims)
    args = (x.requires_grad_(), [p.requires_grad_() for p in params], w.requires_grad_(), codes, 1, 1e-5, stats)
    torch.library.opcheck(torch.ops.dartscc_fast.mixed_op_free.default, args)
    y, st = torch.ops.dartscc_fast.mixed_op_free(*args)
    torch.library.opcheck(torch.ops.dartscc_fast.mixed_op_free_backward.default,
                          (torch.randn_like(y), x.detach(), [p.detach() for p in params], w.detach(), codes, 1,
                           1e-5, st.detach(), eval_stats))


def test_torch_compile_fullgraph():
    prims = ["param", "max_pool", "identity"]
    x, params, w, _ = run(prims, 1, True, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, p, w):
        return dartscc_fast.mixed_op_free(x, [p], w, prims, 1)[0].square().sum()

    out = f(x, params[0], w)
    ref = reference.mixed_op_free(x, params, w, prims, 1).square().sum()
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, [x, w]), torch.autograd.grad(ref, [x, w])):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prims=["identity"], stride=2), "identity, which needs stride 1"),
    (dict(prims=["param", "param"]), "2 param slots but 1 param_outputs"),
    (dict(prims=["max_pool", 7]), r"prims\[1\] = 7 is not a slot code"),
    (dict(stride=3), "stride must be 1 or 2"),
])
def test_errors(kwargs, match):
    x = torch.randn(2, 3, 5, 5)
    args = dict(x=x, param_outputs=[torch.randn(2, 3, 5, 5)], weights=torch.randn(2), prims=["param", "max_pool"],
                stride=1)
    args.update(kwargs)
    if "prims" in kwargs:
        args["weights"] = torch.randn(len(kwargs["prims"]))
    with pytest.raises(RuntimeError, match=match):
        dartscc_fast.mixed_op_free(**args)


def test_unknown_slot_name():
    with pytest.raises(ValueError, match="unknown slot 'conv'"):
        dartscc_fast.mixed_op_free(torch.randn(1, 1, 3, 3), [], torch.ones(1), ["conv"])
