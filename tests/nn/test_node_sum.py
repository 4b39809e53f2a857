"""node_sum (a cell node's sum of its edges) against Python's sum, and FastCell against the reference cell."""
import copy

import pytest
import torch
from conftest import assert_networks_agree

import dartscc_fast
from dartscc_fast import nn, ops, reference
from dartscc_fast.nn.mixed_op import FastCell
from dartscc_fast.nn.primitives import FMNIST_PRIMITIVES
from dartscc_fast.space import get_space

SHAPES = [(64, 16, 28, 28), (3, 5, 7, 7), (2, 3), (1,), (4097,), (0, 3, 4, 4)]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_pythons_sum_bitwise(shape, k, dtype):
    xs = [torch.randn(shape, dtype=dtype) for _ in range(k)]
    y = ops.node_sum(xs)
    assert y.shape == torch.Size(shape) and y.dtype == dtype and y.is_contiguous()
    assert torch.equal(y, sum(xs))  # the same additions in the same order
    assert torch.equal(y, reference.node_sum(xs))
    if k == 1 and y.numel():
        assert y.data_ptr() != xs[0].data_ptr()  # a new tensor, as the sum


def test_every_input_gets_the_output_gradient():
    xs = [torch.randn(3, 4, 5, requires_grad=True) for _ in range(3)]
    g = torch.randn(3, 4, 5)
    grads = torch.autograd.grad(ops.node_sum(xs), xs, g)
    for gi in grads:
        assert torch.equal(gi, g)


def test_gradcheck_float64():
    xs = [torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *a: ops.node_sum(list(a)), xs)
    assert torch.autograd.gradgradcheck(lambda *a: ops.node_sum(list(a)), xs)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    xs = [torch.randn(2, 3, 5, 5, requires_grad=requires_grad) for _ in range(3)]
    torch.library.opcheck(torch.ops.dartscc_fast.node_sum.default, (xs,))


def test_torch_compile_fullgraph():
    xs = [torch.randn(4, 3, 6, 6, requires_grad=True) for _ in range(3)]
    f = torch.compile(lambda a, b, c: ops.node_sum([a, b, c]).sin(), fullgraph=True)
    y = f(*xs)
    torch.testing.assert_close(y, sum(xs).sin())
    ga = torch.autograd.grad(y.sum(), xs)
    gb = torch.autograd.grad(sum(xs).sin().sum(), xs)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q)


def test_other_inputs_take_the_reference():
    # non-contiguous inputs and other dtypes are summed by torch, same values
    x = torch.randn(4, 6)
    xs = [x.t(), torch.randn(6, 4)]
    assert torch.equal(ops.node_sum(xs), sum(xs))
    hs = [torch.randn(3, 3).half() for _ in range(3)]
    assert torch.equal(ops.node_sum(hs), sum(hs))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one tensor"):
        ops.node_sum([])
    with pytest.raises(RuntimeError, match=r"xs\[1\] has shape"):
        ops.node_sum([torch.randn(2, 3), torch.randn(3, 2)])
    with pytest.raises(RuntimeError, match=r"xs\[1\] has dtype"):
        ops.node_sum([torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.dartscc_fast.node_sum([torch.ones(2, dtype=torch.int64)])


def test_search_network_cells_become_fast_cells():
    # the fast supernet's cells sum their nodes in one pass: same outputs and gradients as the reference cell
    space = get_space("fmnist-paper", C=4)
    torch.manual_seed(0)
    fast = space.supernet(fast=True).double()
    assert all(type(c) is FastCell for c in fast.cells)
    slow = copy.deepcopy(fast)
    for c in slow.cells:
        c.__class__ = reference.Cell  # the oracle's cell: the same attributes, quark0/darts's forward
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    assert_networks_agree(slow, fast, x, space.num_edges, space.k)
    assert list(fast.state_dict()) == list(slow.state_dict())


def test_only_the_packages_cells_are_converted():
    class Cell(nn.Cell):  # a user's own cell class
        pass

    net = nn.Network(4, 10, 3, primitives=FMNIST_PRIMITIVES, in_channels=1, mixed_op=dartscc_fast.MixedOp)
    net.cells[0].__class__ = Cell
    dartscc_fast.fuse_preprocessing(net)
    assert type(net.cells[0]) is Cell and type(net.cells[1]) is FastCell
