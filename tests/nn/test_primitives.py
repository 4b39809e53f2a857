"""The DARTS primitives: the derived networks' FactorizedReduce against quark0/darts's."""
import pytest
import torch

from dartscc_fast.nn.primitives import FactorizedReduce, SubsampledFactorizedReduce, derived_op


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "cl"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 6, 8, 4), (0, 4, 6, 6)], ids=str)
def test_subsampled_factorized_reduce_matches(shape, train, memory_format):
    torch.manual_seed(0)
    c_out = 2 * shape[1]
    ref = FactorizedReduce(shape[1], c_out).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        ref.bn.running_mean.uniform_(-1, 1)
        ref.bn.running_var.uniform_(0.5, 2)
        ref.bn.weight.uniform_(0.5, 2)
        ref.bn.bias.uniform_(-1, 1)
    ours = SubsampledFactorizedReduce(shape[1], c_out).double()
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.train(train), ours.train(train)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr)
    g = torch.randn_like(yr)
    gr = torch.autograd.grad(yr, [xr, *ref.parameters()], g)
    go = torch.autograd.grad(yo, [xo, *ours.parameters()], g)
    for a, b in zip(go, gr):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean)
    torch.testing.assert_close(ours.bn.running_var, ref.bn.running_var)


def test_subsampled_factorized_reduce_needs_even_planes():
    with pytest.raises(ValueError, match="even H and W"):
        SubsampledFactorizedReduce(4, 4)(torch.randn(1, 4, 5, 6))


def test_derived_ops():
    assert type(derived_op("skip_connect", 4, 2)) is SubsampledFactorizedReduce
    assert type(derived_op("skip_connect", 4, 1)).__name__ == "Identity"
    sep = derived_op("sep_conv_3x3", 4, 2)
    assert sep.op[3].affine  # derived networks are evaluated with affine BatchNorm, as in DARTS


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "cl"])
def test_relu_grids_gradcheck(memory_format):
    from dartscc_fast.nn.primitives import _ReluGrids
    torch.manual_seed(0)
    # away from ReLU's kink, where finite differences are meaningless
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).contiguous(memory_format=memory_format).requires_grad_()
    assert torch.autograd.gradcheck(_ReluGrids.apply, (x,))
    even, odd = _ReluGrids.apply(x)
    torch.testing.assert_close(even, x[:, :, ::2, ::2].relu())
    torch.testing.assert_close(odd, x[:, :, 1::2, 1::2].relu())
    # one grid unused: its gradient is None, and its pixels get zero
    (g,) = torch.autograd.grad(odd.sum(), x)
    expected = torch.zeros_like(x)
    expected[:, :, 1::2, 1::2] = (x[:, :, 1::2, 1::2] > 0).double()
    torch.testing.assert_close(g, expected)
    assert g.is_contiguous(memory_format=memory_format)
