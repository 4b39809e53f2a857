"""latency_reg against the pure-PyTorch reference: value, gradients (w, L, S), gradcheck, opcheck, compile."""
import pytest
import torch
from conftest import DEVICES, tol

from dartscc_fast import reference
from dartscc_fast.ops.latency_reg import latency_reg

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (w shape, S shape): per-edge or per-sample weights, one or per-sample S
LAYOUTS = [((5, 3), (3,)), ((4, 5, 3), (3,)), ((5, 3), (4, 3)), ((4, 5, 3), (4, 3)),
           ((1, 1), (1,)), ((0, 3), (3,)), ((0, 5, 3), (3,)), ((7, 28, 8), (7, 3)), ((2, 1, 16), (16,))]


def types_for(k, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    ti = torch.randint(-1, t, (k,), generator=g).tolist()
    ti[0] = min(t - 1, 0)  # at least one typed candidate
    return ti


def make(wshape, sshape, dtype, device, requires_grad=False):
    k, e = wshape[-1], wshape[-2]
    w = torch.rand(wshape, dtype=torch.float64).to(dtype=dtype, device=device)
    L = (torch.rand(e, k, dtype=torch.float64) * 3).to(dtype=dtype, device=device)
    S = torch.distributions.Dirichlet(torch.ones(sshape[-1], dtype=torch.float64)).sample(sshape[:-1])
    S = S.to(dtype=dtype, device=device)
    if requires_grad:
        w, L, S = (t.requires_grad_() for t in (w, L, S))
    return w, L, S, types_for(k, sshape[-1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape,sshape", LAYOUTS)
def test_matches_reference(device, dtype, wshape, sshape):
    w, L, S, ti = make(wshape, sshape, dtype, device, requires_grad=True)
    y = latency_reg(w, L, S, ti)
    g = torch.randn(y.shape, dtype=torch.float64).to(dtype=dtype, device=device)
    grads = torch.autograd.grad(y, (w, L, S), g)
    w64, L64, S64 = (t.detach().double().requires_grad_() for t in (w, L, S))
    y64 = reference.latency_reg(w64, L64, S64, ti)
    grads64 = torch.autograd.grad(y64, (w64, L64, S64), g.double(), allow_unused=True)
    assert y.shape == y64.shape and y.dtype == dtype
    t = tol(dtype)
    n = max(1, w.numel())  # values sum up to E * k * N products
    torch.testing.assert_close(y.double(), y64, atol=t["atol"] * n ** 0.5 * 4, rtol=t["rtol"] * 4)
    for a, b in zip(grads, grads64):
        b = torch.zeros_like(a, dtype=torch.float64) if b is None else b
        torch.testing.assert_close(a.double(), b, atol=t["atol"] * n ** 0.5 * 4, rtol=t["rtol"] * 4)


@pytest.mark.parametrize("device", DEVICES)
def test_none_costs_nothing(device):
    w = torch.ones(3, 2, device=device)
    L = torch.full((3, 2), 5.0, device=device)
    S = torch.tensor([0.2, 0.3, 0.5], device=device)
    assert latency_reg(w, L, S, [-1, -1]).item() == 0
    assert latency_reg(w, L, S, [2, -1]).item() == pytest.approx(3 * 5 * 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous(device):
    w, L, S, ti = make((6, 4, 3), (6, 3), torch.float64, device)
    wt = w.transpose(0, 1).contiguous().transpose(0, 1)
    Lt = L.t().contiguous().t()
    St = torch.cat([S, S], 1)[:, ::2]
    torch.testing.assert_close(latency_reg(wt, Lt, St, ti), reference.latency_reg(wt, Lt, St, ti))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wshape,sshape", [((5, 3), (3,)), ((4, 5, 3), (3,)), ((5, 3), (4, 3)),
                                           ((4, 5, 3), (4, 3))])
def test_gradcheck(device, wshape, sshape):
    w, L, S, ti = make(wshape, sshape, torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, L, S: latency_reg(w, L, S, ti), (w, L, S))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wshape,sshape", [((5, 3), (3,)), ((4, 5, 3), (3,)), ((5, 3), (4, 3)),
                                           ((4, 5, 3), (4, 3)), ((0, 3), (3,))])
def test_opcheck(device, wshape, sshape):
    w, L, S, ti = make(wshape, sshape, torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.dartscc_fast.latency_reg.default, (w, L, S, ti))
    g = torch.ones(() if len(wshape) == 2 and len(sshape) == 1 else (4,), device=device)
    torch.library.opcheck(torch.ops.dartscc_fast.latency_reg_backward.default,
                          (g, w.detach(), L.detach(), S.detach(), ti))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    w, L, S, ti = make((4, 14, 8), (4, 3), torch.float32, device)
    logits = torch.randn(4, 14, 8, device=device, requires_grad=True)

    def loss(logits, L, S):
        return latency_reg(torch.softmax(logits, -1), L, S, ti).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    y = compiled(logits, L, S)
    (g,) = torch.autograd.grad(y, logits)
    y_ref = loss(logits, L, S)
    (g_ref,) = torch.autograd.grad(y_ref, logits)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g, g_ref)


def test_type_index_tensor():
    w, L, S, ti = make((5, 3), (3,), torch.float64, "cpu")
    assert latency_reg(w, L, S, torch.tensor(ti)).item() == pytest.approx(
        reference.latency_reg(w, L, S, ti).item())


@pytest.mark.parametrize("bad,match", [
    (lambda w, L, S, ti: (w[0, 0], L, S, ti), "w must have shape"),
    (lambda w, L, S, ti: (w, L[:, :2], S, ti), "L must have shape"),
    (lambda w, L, S, ti: (w, L.float(), S, ti), "L must have w's dtype"),
    (lambda w, L, S, ti: (w, L, S[None, None], ti), "S must have shape"),
    (lambda w, L, S, ti: (w, L, S.float(), ti), "S must have w's dtype"),
    (lambda w, L, S, ti: (w, L, S, ti[:2]), "type_index must list"),
    (lambda w, L, S, ti: (w, L, S, [3, 0, 0]), "type_index\\[0\\] = 3"),
    (lambda w, L, S, ti: (w, L, S, [-2, 0, 0]), "is not an op type"),
    (lambda w, L, S, ti: (w, L, S.expand(3, 3).contiguous(), ti), "must agree on N"),
    (lambda w, L, S, ti: (w.long(), L, S, ti), "floating-point"),
])
def test_errors(bad, match):
    w, L, S, ti = make((4, 5, 3), (3,), torch.float64, "cpu")
    with pytest.raises(RuntimeError, match=match):
        latency_reg(*bad(w, L, S, ti))
