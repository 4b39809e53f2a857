"""gumbel_softmax: the Philox sample equals the NumPy reference, seeds reproduce, gradients are right."""
import math

import pytest
import torch
from conftest import DEVICES, tol

import dartscc_fast
from dartscc_fast import reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(14, 3), (4, 14, 8), (1, 1), (0, 5), (3, 0, 4)])
@pytest.mark.parametrize("hard", [False, True])
def test_matches_reference(device, dtype, shape, hard):
    logits = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_()
    y = dartscc_fast.gumbel_softmax(logits, 0.7, hard, seed=1234)
    l64 = logits.detach().double().cpu().requires_grad_()
    y64 = reference.gumbel_softmax(l64, 0.7, hard, seed=1234)
    torch.testing.assert_close(y.double().cpu(), y64.detach(), **tol(dtype))
    if logits.numel():
        g = torch.randn(shape, dtype=torch.float64)
        (gl,) = torch.autograd.grad(y, logits, g.to(y))
        (gl64,) = torch.autograd.grad(y64, l64, g)
        torch.testing.assert_close(gl.double().cpu(), gl64, **tol(dtype))


def test_hard_is_exact_one_hot_of_soft_argmax():
    logits = torch.randn(64, 14, 8)
    y, soft = dartscc_fast.gumbel_softmax(logits, 0.5, True, seed=3, return_soft=True)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert (y.sum(-1) == 1).all()
    assert torch.equal(y.argmax(-1), soft.argmax(-1))
    torch.testing.assert_close(soft.sum(-1), torch.ones(64, 14))


def test_generator_reproduces_and_advances():
    logits = torch.randn(14, 3)
    a = dartscc_fast.gumbel_softmax(logits, generator=torch.Generator().manual_seed(7))
    b = dartscc_fast.gumbel_softmax(logits, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    c1 = dartscc_fast.gumbel_softmax(logits, generator=gen)
    c2 = dartscc_fast.gumbel_softmax(logits, generator=gen)
    assert torch.equal(a, b) and torch.equal(a, c1) and not torch.equal(c1, c2)
    torch.manual_seed(1)
    d1 = dartscc_fast.gumbel_softmax(logits)
    torch.manual_seed(1)
    assert torch.equal(d1, dartscc_fast.gumbel_softmax(logits))


def test_noise_is_gumbel_distributed():
    # mean of standard Gumbel is the Euler-Mascheroni constant, variance pi^2 / 6
    g = torch.from_numpy(reference.philox_gumbel(99, 200_000))
    assert abs(g.mean().item() - 0.5772) < 0.01
    assert abs(g.var().item() - math.pi ** 2 / 6) < 0.03
    # and the op samples categories with the softmax probabilities
    logits = torch.tensor([[0.0, math.log(2.0), math.log(5.0)]]).expand(40_000, 3).contiguous()
    y = dartscc_fast.gumbel_softmax(logits, 1.0, True, seed=5)
    torch.testing.assert_close(y.mean(0), torch.tensor([0.125, 0.25, 0.625]), atol=0.01, rtol=0)


@pytest.mark.parametrize("hard", [False, True])
def test_gradcheck(hard):
    logits = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l: dartscc_fast.gumbel_softmax(l, 0.6, hard, seed=11, return_soft=True)[1],
                                    (logits,))
    if not hard:
        assert torch.autograd.gradcheck(lambda l: dartscc_fast.gumbel_softmax(l, 0.6, False, seed=11), (logits,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hard", [False, True])
def test_opcheck(device, hard):
    logits = torch.randn(6, 4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.dartscc_fast.gumbel_softmax.default, (logits, torch.tensor(5), 0.5, hard))
    soft = torch.softmax(torch.randn(6, 4, device=device), -1)
    torch.library.opcheck(torch.ops.dartscc_fast.gumbel_softmax_backward.default,
                          (torch.randn(6, 4, device=device), soft, 0.5))


def test_torch_compile_fullgraph():
    logits = torch.randn(14, 3, requires_grad=True)
    seed = torch.tensor(42)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(logits, seed):
        return (dartscc_fast.gumbel_softmax(logits, 0.5, True, seed=seed) * torch.arange(3.0)).sum()

    out = f(logits, seed)
    ref = (reference.gumbel_softmax(logits, 0.5, True, seed=42) * torch.arange(3.0)).sum()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, logits)[0], torch.autograd.grad(ref, logits)[0])


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        dartscc_fast.gumbel_softmax(torch.randn(3, 3), tau)
    with pytest.raises(RuntimeError, match="tau must be finite and > 0"):
        torch.ops.dartscc_fast.gumbel_softmax(torch.randn(3, 3), torch.tensor(1), tau, False)


def test_bad_inputs():
    with pytest.raises(RuntimeError, match="logits must be a floating-point"):
        dartscc_fast.gumbel_softmax(torch.ones(3, 3, dtype=torch.long), seed=1)
    with pytest.raises(RuntimeError, match="logits must have shape"):
        dartscc_fast.gumbel_softmax(torch.tensor(1.0), seed=1)
    with pytest.raises(RuntimeError, match="seed must be a CPU int64 tensor"):
        torch.ops.dartscc_fast.gumbel_softmax(torch.randn(3, 3), torch.tensor([1.0]), 1.0, False)
