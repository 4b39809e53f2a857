"""mixed_sum against the pure-PyTorch reference: forward, backward, layouts, dtypes, errors."""
import pytest
import torch
from conftest import DEVICES, tol

import dartscc_fast
from dartscc_fast import reference

SHAPES = [(4, 3, 5, 7), (1, 1, 1, 1), (3, 2, 28, 28), (2, 5)]


def make(shape, k, per_sample, dtype, device, layout="contiguous"):
    outs = [torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device) for _ in range(k)]
    if layout == "channels_last":
        outs = [o.contiguous(memory_format=torch.channels_last) for o in outs]
    elif layout == "strided":
        outs = [torch.randn(shape[:-1] + (shape[-1] * 2,), dtype=dtype, device=device)[..., ::2] for _ in range(k)]
    wshape = (shape[0], k) if per_sample else (k,)
    w = torch.randn(wshape, dtype=torch.float64).to(dtype=dtype, device=device)
    return outs, w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, per_sample, k, shape):
    check_against_float64(*make(shape, k, per_sample, dtype, device), per_sample)


def check_against_float64(outs, w, per_sample):
    """Forward and every gradient of ours against the reference in float64 (the oracle)."""
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()
    y = dartscc_fast.mixed_sum(outs, w)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, outs + [w], g)
    o64 = [o.detach().double().requires_grad_() for o in outs]
    w64 = w.detach().double().requires_grad_()
    y64 = reference.mixed_sum(o64, w64)
    grads64 = torch.autograd.grad(y64, o64 + [w64], g.double())
    t = tol(y.dtype)
    torch.testing.assert_close(y.double(), y64, **t)
    for a, b in zip(grads[:-1], grads64[:-1]):
        torch.testing.assert_close(a.double(), b, **t)
    # the weight gradient sums many products: scale its tolerance with their count
    n = y.numel() / (y.shape[0] if per_sample else 1)
    torch.testing.assert_close(grads[-1].double(), grads64[-1], atol=t["atol"] * n ** 0.5 * 4, rtol=t["rtol"] * 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_layouts(device, layout, per_sample):
    outs, w = make((3, 4, 5, 6), 3, per_sample, torch.float64, device, layout)
    y = dartscc_fast.mixed_sum(outs, w)
    torch.testing.assert_close(y, reference.mixed_sum(outs, w))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_tensor_input(device):
    outs, w = make((2, 3, 4, 4), 3, False, torch.float32, device)
    torch.testing.assert_close(dartscc_fast.mixed_sum(torch.stack(outs), w), dartscc_fast.mixed_sum(outs, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_empty(device, per_sample):
    outs, w = make((0, 3, 4, 4), 3, per_sample, torch.float32, device)
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()
    y = dartscc_fast.mixed_sum(outs, w)
    assert y.shape == (0, 3, 4, 4)
    gw = torch.autograd.grad(y.sum(), w)[0]
    assert gw.shape == w.shape and (gw == 0).all()


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck(per_sample):
    outs, w = make((3, 2, 3, 5), 3, per_sample, torch.float64, "cpu")
    inputs = [o.requires_grad_() for o in outs] + [w.requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: dartscc_fast.mixed_sum(list(a[:-1]), a[-1]), inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, per_sample, layout):
    outs, w = make((3, 2, 3, 5), 3, per_sample, torch.float32, device, layout)
    outs = [o.requires_grad_() for o in outs]
    torch.library.opcheck(torch.ops.dartscc_fast.mixed_sum.default, (outs, w.requires_grad_()))
    g = torch.randn_like(outs[0])
    torch.library.opcheck(torch.ops.dartscc_fast.mixed_sum_backward.default,
                          (g, [o.detach() for o in outs], w.detach()))


def test_torch_compile_fullgraph():
    outs, w = make((4, 3, 6, 6), 3, True, torch.float32, "cpu")
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(a, b, c, w):
        return dartscc_fast.mixed_sum([a, b, c], w).relu().sum()

    loss = f(*outs, w)
    grads = torch.autograd.grad(loss, outs + [w])
    ref = reference.mixed_sum(outs, w).relu().sum()
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, torch.autograd.grad(ref, outs + [w])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("args,match", [
    (lambda o, w: ([], w), "between 1 and 16"),
    (lambda o, w: (o, w[:2]), r"weights must have shape \[k\] or \[N, k\] with k=3, got \[2\]"),
    (lambda o, w: (o, w.expand(5, 3).contiguous()), r"per-sample weights must have shape \[N, k\] = \[4, 3\]"),
    (lambda o, w: (o, w.reshape(1, 1, 3)), "weights must have shape"),
    (lambda o, w: (o, w.double()), "weights must have the outputs' dtype"),
    (lambda o, w: (o[:2] + [o[2][:, :2]], w), "outputs\\[2\\] has shape"),
    (lambda o, w: (o[:2] + [o[2].double()], w), "outputs\\[2\\] has dtype"),
    (lambda o, w: ([x.long() for x in o], w.long()), "floating-point"),
])
def test_errors(args, match):
    outs, w = make((4, 3, 5, 5), 3, False, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=match):
        dartscc_fast.mixed_sum(*args(outs, w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to mix devices")
def test_error_mixed_devices():
    outs, w = make((4, 3, 5, 5), 3, False, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="is on"):
        dartscc_fast.mixed_sum(outs, w.cuda())


def test_weight_gradient_is_deterministic_across_thread_counts():
    outs, w = make((8, 16, 32, 32), 4, True, torch.float32, "cpu")
    outs = [o.requires_grad_() for o in outs]
    w.requires_grad_()
    old = torch.get_num_threads()
    try:
        grads = []
        for t in (1, 2):
            torch.set_num_threads(t)
            grads.append(torch.autograd.grad(dartscc_fast.mixed_sum(outs, w).sum(), w)[0])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("k", [3, 5])
def test_large_float32_streaming_path(per_sample, k):
    # Past 8 MiB of gradients the CPU backward writes with non-temporal stores;
    # an odd inner size puts the per-sample rows off 16-byte alignment.
    shape = (33, 3, 181, 151)
    check_against_float64(*make(shape, k, per_sample, torch.float32, "cpu"), per_sample)
