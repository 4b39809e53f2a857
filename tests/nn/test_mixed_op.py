"""The drop-in MixedOp and replace_mixed_ops against quark0/darts semantics."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_networks_agree
from torch import nn

import dartscc_fast
from dartscc_fast import nn as fast_nn
from dartscc_fast import reference
from dartscc_fast.nn.primitives import DARTS_PRIMITIVES, FMNIST_PRIMITIVES, search_candidate
from dartscc_fast.nn.tuning import TUNING


@pytest.fixture(autouse=True, params=["fused", "torch"])
def conv_path(request, monkeypatch):
    """Every test twice: convolution units all fused, and all through torch (see TUNING.fused_conv_min_pixels)."""
    monkeypatch.setattr(TUNING, "fused_conv_min_pixels", 0 if request.param == "fused" else 10 ** 9)
    return request.param


def pair(C, stride, primitives, dtype=torch.float64):
    ref = reference.MixedOp(C, stride, primitives).to(dtype)
    fast = dartscc_fast.MixedOp(C, stride, primitives).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def compare(ref, fast, x, w, hard=False, atol=1e-9):
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    y1, y2 = ref(x1, w1, hard=hard), fast(x2, w2, hard=hard)
    torch.testing.assert_close(y2, y1, atol=atol, rtol=atol)
    g = torch.randn_like(y1)
    p1 = [p for p in ref.parameters()]
    p2 = [p for p in fast.parameters()]
    g1 = torch.autograd.grad(y1, [x1, w1] + p1, g, allow_unused=True)
    g2 = torch.autograd.grad(y2, [x2, w2] + p2, g, allow_unused=True)
    for a, b in zip(g2, g1):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=atol)
    for (n1, b1), (n2, b2) in zip(ref.named_buffers(), fast.named_buffers()):
        assert n1 == n2
        torch.testing.assert_close(b2, b1, atol=atol, rtol=atol)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("primitive", DARTS_PRIMITIVES)
def test_every_primitive_alone(stride, per_sample, primitive):
    ref, fast = pair(4, stride, [primitive])
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.randn((3, 1) if per_sample else (1,), dtype=torch.float64)
    compare(ref, fast, x, w)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, FMNIST_PRIMITIVES])
def test_soft(stride, per_sample, primitives):
    ref, fast = pair(4, stride, primitives)
    x = torch.randn(5, 4, 10, 10, dtype=torch.float64)
    k = len(primitives)
    w = torch.softmax(torch.randn((5, k) if per_sample else (k,), dtype=torch.float64), -1)
    compare(ref, fast, x, w)
    # several steps: running statistics must follow the reference
    compare(ref, fast, x * 2 + 1, w)
    ref.eval(), fast.eval()
    compare(ref, fast, x, w)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("per_sample", [False, True])
def test_hard(stride, per_sample):
    ref, fast = pair(4, stride, DARTS_PRIMITIVES)
    x = torch.randn(9, 4, 8, 8, dtype=torch.float64)
    logits = torch.randn((9, 8) if per_sample else (8,), dtype=torch.float64)
    w = dartscc_fast.gumbel_softmax(logits, 0.5, True, seed=4)
    soft = torch.softmax(logits, -1)
    w = w - soft + soft  # straight-through values, as training produces them
    compare(ref, fast, x, w, hard=True)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("drawn", range(len(DARTS_PRIMITIVES)), ids=DARTS_PRIMITIVES)
def test_hard_each_drawn_candidate(stride, drawn):
    # a drawn pool runs through the fused kernel: values, gradients and running
    # statistics as the module's, in training and in eval mode
    ref, fast = pair(4, stride, DARTS_PRIMITIVES)
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    soft = torch.softmax(torch.randn(8, dtype=torch.float64), -1)
    w = torch.nn.functional.one_hot(torch.tensor(drawn), 8).double() - soft + soft
    compare(ref, fast, x, w, hard=True)
    compare(ref, fast, x * 3 - 1, w, hard=True)
    ref.eval(), fast.eval()
    compare(ref, fast, x, w, hard=True)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("drawn", range(len(DARTS_PRIMITIVES)), ids=DARTS_PRIMITIVES)
def test_hard_exact_one_hot(stride, drawn):
    # the package's hard Gumbel-Softmax gives exact one-hot values: the drawn
    # output is returned as it is, with the weights' straight-through gradient
    ref, fast = pair(4, stride, DARTS_PRIMITIVES)
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64)
    w = torch.nn.functional.one_hot(torch.tensor(drawn), 8).double()
    compare(ref, fast, x, w, hard=True)
    compare(ref, fast, x.contiguous(memory_format=torch.channels_last), w, hard=True)
    ref.eval(), fast.eval()
    compare(ref, fast, x, w, hard=True)


def test_hard_exact_one_hot_never_aliases_the_input():
    # a drawn identity: the output is the input's values, but changing it must not change the input
    ref, fast = pair(4, 1, DARTS_PRIMITIVES)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = torch.nn.functional.one_hot(torch.tensor(DARTS_PRIMITIVES.index("skip_connect")), 8).double()
    with torch.no_grad():
        y = fast(x, w, hard=True)
        y.add_(1)
    assert not torch.equal(y, x)
    y = fast(x, w, hard=True)  # grad mode, but nothing requires a gradient
    y.add_(1)
    assert not torch.equal(y, x)
    x.requires_grad_()
    y = fast(x * 1, w, hard=True)
    with pytest.raises(RuntimeError, match="view"):
        y.add_(1)


def test_odd_sizes_and_channels_last():
    ref, fast = pair(3, 1, DARTS_PRIMITIVES)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    compare(ref, fast, x, torch.softmax(torch.randn(8, dtype=torch.float64), -1))
    ref, fast = pair(4, 2, [p for p in DARTS_PRIMITIVES if p != "skip_connect"])
    compare(ref, fast, torch.randn(2, 4, 7, 9, dtype=torch.float64), torch.rand(7, dtype=torch.float64))


def test_empty_batch():
    fast = dartscc_fast.MixedOp(4, 1, ["max_pool_3x3", "skip_connect", "none"]).eval()
    y = fast(torch.randn(0, 4, 6, 6), torch.ones(3) / 3)
    assert y.shape == (0, 4, 6, 6)


def test_state_dict_keys_match_darts():
    ref, fast = pair(8, 2, DARTS_PRIMITIVES)
    assert list(ref.state_dict()) == list(fast.state_dict())
    assert "_ops.1.1.running_mean" in fast.state_dict()  # max_pool_3x3 + BatchNorm, as in DARTS


def test_bad_primitive_and_weights():
    with pytest.raises(ValueError, match="unknown primitive 'conv_9x9'"):
        dartscc_fast.MixedOp(4, 1, ["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        dartscc_fast.MixedOp(4, 3)
    op = dartscc_fast.MixedOp(4, 1, FMNIST_PRIMITIVES)
    with pytest.raises(ValueError, match=r"weights must have shape \[k\] or \[N, k\] with k=3, got \[4\]"):
        op(torch.randn(2, 4, 5, 5), torch.ones(4))


# --- a DARTS model as users have it: quark0/darts classes, not ours ---------------------
class MixedOp(nn.Module):  # the name is what replace_mixed_ops looks for
    def __init__(self, C, stride, primitives=DARTS_PRIMITIVES):
        super().__init__()
        self._ops = nn.ModuleList(search_candidate(p, C, stride) for p in primitives)

    def forward(self, x, weights, hard=False):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, FMNIST_PRIMITIVES])
def test_replace_mixed_ops_in_darts_network(primitives):
    torch.manual_seed(0)
    net = fast_nn.Network(4, 10, 3, primitives=primitives, in_channels=1, mixed_op=MixedOp).double()
    fast = copy.deepcopy(net)
    n = dartscc_fast.replace_mixed_ops(fast)
    assert n == 3 * net.num_edges
    # the one FactorizedReduce preprocessing (after the first reduction); ReLUConvBN stays
    assert dartscc_fast.fuse_preprocessing(fast) == 1
    assert type(fast.cells[2].preprocess0).__name__ == "SubsampledFactorizedReduce"
    assert type(fast.cells[0].preprocess1).__name__ == "ReLUConvBN"
    assert dartscc_fast.fuse_preprocessing(fast) == 0  # idempotent
    assert all(isinstance(m, dartscc_fast.MixedOp) for m in fast.modules() if type(m).__name__ == "MixedOp")
    assert list(net.state_dict()) == list(fast.state_dict())
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    E, k = net.num_edges, len(primitives)
    for _ in range(2):  # a second step checks the BatchNorm running statistics too
        wn, wr = assert_networks_agree(net, fast, x, E, k)
    net.eval(), fast.eval()
    torch.testing.assert_close(fast(x, wn, wr), net(x, wn, wr))


def darts_and_fast(primitives):
    """A quark0/darts-style network (float64) and a copy with the fast MixedOps and fuse_preprocessing."""
    torch.manual_seed(0)
    net = fast_nn.Network(4, 10, 3, primitives=primitives, in_channels=1, mixed_op=MixedOp).double()
    fast = copy.deepcopy(net)
    dartscc_fast.replace_mixed_ops(fast)
    dartscc_fast.fuse_preprocessing(fast)
    return net, fast


@pytest.mark.parametrize("channels_last", [False, True])
def test_cells_share_each_states_reduce_grids(monkeypatch, channels_last):
    # each reduction cell's two states feed 4 stride-2 edges each: their skip_connects (FactorizedReduce)
    # compute the state's ReLU grids once; values and gradients as quark0/darts's
    from dartscc_fast.nn import primitives
    net, fast = darts_and_fast(FMNIST_PRIMITIVES)
    dartscc_fast.fuse_preprocessing(fast)  # the cells' hooks are registered once
    calls = []
    apply = primitives._ReluGrids.apply
    monkeypatch.setattr(primitives._ReluGrids, "apply", lambda x: calls.append(x) or apply(x))
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wn, wr = assert_networks_agree(net, fast, x, net.num_edges, len(FMNIST_PRIMITIVES))
    # two reduction cells x two states, plus the last cell's FactorizedReduce preprocessing
    assert len(calls) == 5
    assert not primitives._grid_scope.stack  # every scope closed
    fast(x, wn, wr)  # a second forward computes the grids anew
    assert len(calls) == 10


@pytest.mark.parametrize("primitives", [DARTS_PRIMITIVES, FMNIST_PRIMITIVES])
def test_cells_pool_each_state_once(monkeypatch, primitives):
    # in training, the edges leaving one state share its pooling + BatchNorm (TUNING.share_pools): 5 states feed
    # edges in each of 3 cells, so 15 pools per pooling kind instead of 42; values and gradients as
    # quark0/darts's (soft and hard), and so is every BatchNorm's running statistics; off, and in eval
    # mode, every edge pools
    net, fast = darts_and_fast(primitives)
    pools = []
    free, pool_slots = dartscc_fast.ops.mixed_op_free, dartscc_fast.ops.prim_codes(["max_pool", "avg_pool"])
    monkeypatch.setattr(dartscc_fast.ops, "mixed_op_free",
                        lambda x, p, w, prims, *a, **k: pools.extend(
                            q for q in dartscc_fast.ops.prim_codes(prims) if q in pool_slots)
                        or free(x, p, w, prims, *a, **k))
    kinds = sum(p in ("max_pool_3x3", "avg_pool_3x3") for p in primitives)
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    E, k = net.num_edges, len(primitives)
    wn, wr = assert_networks_agree(net, fast, x, E, k)
    assert len(pools) == 15 * kinds
    monkeypatch.setattr(TUNING, "share_pools", False)
    pools.clear()
    assert_networks_agree(net, fast, x, E, k)
    assert len(pools) == 3 * E * kinds
    for a, b in zip(net.modules(), fast.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(b.running_mean, a.running_mean)
            torch.testing.assert_close(b.running_var, a.running_var)
            assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 2
    monkeypatch.setattr(TUNING, "share_pools", True)
    net.eval(), fast.eval()  # running statistics: each edge's own, no sharing
    pools.clear()
    torch.testing.assert_close(fast(x, wn, wr), net(x, wn, wr))
    assert len(pools) == 3 * E * kinds
    net.train(), fast.train()
    # hard: every edge draws the max pool; shared under autograd (each edge returns a view of the state's
    # pool), not without it, where the edges would hand back one tensor
    one_hot = F.one_hot(torch.full((E,), primitives.index("max_pool_3x3")), k).double().requires_grad_()
    pools.clear()
    torch.testing.assert_close(fast(x, one_hot, one_hot, hard=True), net(x, one_hot, one_hot))
    assert len(pools) == 15
    pools.clear()
    with torch.no_grad():
        fast(x, one_hot, one_hot, hard=True)
    assert len(pools) == 3 * E


def test_reduction_cells_run_each_states_skip_connects_as_one_group(monkeypatch):
    # the 4 stride-2 skip_connects (FactorizedReduce) leaving each input state of a reduction cell convolve
    # each pixel grid once, all members' weights stacked; values and gradients as one by one
    from dartscc_fast.nn import primitives
    torch.manual_seed(0)
    net = fast_nn.Network(4, 10, 3, primitives=FMNIST_PRIMITIVES, in_channels=1, mixed_op=MixedOp).double()
    dartscc_fast.replace_mixed_ops(net)
    dartscc_fast.fuse_preprocessing(net)
    groups = {id(g[0]) for cell in net.cells for mixed in cell._ops for g in mixed._reduce_group if g is not None}
    assert len(groups) == 4  # two reduction cells x two states
    for cell in net.cells:
        for e, mixed in enumerate(cell._ops):
            entry = mixed._reduce_group[FMNIST_PRIMITIVES.index("skip_connect")]
            assert (entry is not None) == (cell.reduction and e in (0, 1, 2, 3, 5, 6, 9, 10))  # edges from states 0, 1
    alone = copy.deepcopy(net)
    for cell in alone.cells:
        for mixed in cell._ops:
            mixed._reduce_group = [None] * len(mixed._reduce_group)
    convs = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a, **k: convs.append(w.shape) or conv2d(x, w, *a, **k))
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    k = len(FMNIST_PRIMITIVES)
    uniform = torch.full((net.num_edges, k), 1.0 / k, dtype=torch.float64)

    def count_convs(model, w, hard=False):
        convs.clear()
        with torch.no_grad():
            y = model(x, w, w, hard=hard)
        return len(convs), y

    assert count_convs(alone, uniform)[0] - count_convs(net, uniform)[0] == 32 - 8  # 4 groups x 2 grids, not 16 x 2
    wn, wr = assert_networks_agree(alone, net, x, net.num_edges, k)
    # hard (drawn ops only): no group, every member alone
    one_hot = F.one_hot(wn.detach().argmax(-1), k).to(wn)
    (n_net, y_net), (n_alone, y_alone) = count_convs(net, one_hot, True), count_convs(alone, one_hot, True)
    assert n_net == n_alone
    torch.testing.assert_close(y_net, y_alone)
    assert not primitives._grid_scope.stack


def test_checkpoint_of_darts_model_loads_into_fast_model():
    net = reference.Network(4, 10, 3, primitives=DARTS_PRIMITIVES, in_channels=1, mixed_op=MixedOp)
    fast = fast_nn.Network(4, 10, 3, primitives=DARTS_PRIMITIVES, in_channels=1, mixed_op=dartscc_fast.MixedOp)
    fast.load_state_dict(net.state_dict())  # strict: same keys, same shapes
    net.load_state_dict(fast.state_dict())


def test_unknown_candidates_run_as_modules():
    ops = nn.ModuleList([search_candidate("sep_conv_3x3", 4, 1), nn.Sequential(nn.AvgPool2d(3, 1, 1)),
                         search_candidate("max_pool_3x3", 4, 1)])
    fast = dartscc_fast.MixedOp.from_ops(ops)
    assert fast._kinds == ["param", "param", "max_pool"]
    x = torch.randn(2, 4, 6, 6)
    w = torch.rand(3)
    torch.testing.assert_close(fast(x, w), sum(wi * op(x) for wi, op in zip(w, ops)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv_path", ["fused"], indirect=True)  # the fused path only
@pytest.mark.parametrize("stride", [1, 2])
def test_convolutions_run_as_fused_units_on_cpu(stride, monkeypatch, conv_path):
    """SepConv and DilConv run through relu_dw_pw_conv on the CPU (float32/64), FactorizedReduce on its two pixel
    grids: never an nn.Conv2d module."""
    ref, fast = pair(4, stride, DARTS_PRIMITIVES)
    calls = []
    real = dartscc_fast.ops.relu_dw_pw_conv
    monkeypatch.setattr(dartscc_fast.ops, "relu_dw_pw_conv", lambda *a: calls.append(a[3:]) or real(*a))
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: pytest.fail("a convolution ran as a module"))
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    fast(x, torch.softmax(torch.randn(8, dtype=torch.float64), -1))
    # sep_conv_3x3/5x5: 2 units each, dil_conv_3x3/5x5: 1 each
    assert len(calls) == 6
    assert "fused_convs_on_cpu=['sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']" in repr(fast)
    assert ("subsampled=['skip_connect']" if stride == 2 else "subsampled=[]") in repr(fast)


def test_half_precision_convolutions_run_as_modules():
    ref, fast = pair(4, 1, FMNIST_PRIMITIVES, dtype=torch.float32)
    x = torch.randn(2, 4, 6, 6).bfloat16()
    w = torch.softmax(torch.randn(3), -1).bfloat16()
    torch.testing.assert_close(fast.bfloat16()(x, w).float(), ref.bfloat16()(x, w).float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("hw,k,dilation,stride,fused", [
    (28, 3, 1, 1, True), (28, 3, 1, 2, True), (14, 3, 1, 1, True), (14, 3, 1, 2, False), (7, 3, 1, 1, False),
    (7, 3, 2, 1, True), (7, 5, 1, 1, True), (7, 1, 1, 1, False), (28, 1, 1, 2, True)])
@pytest.mark.parametrize("conv_path", ["torch"], indirect=True)  # once: the test sets the threshold itself
def test_fused_units_where_they_are_faster(hw, k, dilation, stride, fused, conv_path):
    from dartscc_fast.nn.mixed_op import _unit_is_fused
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TUNING, "fused_conv_min_pixels", 196)
        assert _unit_is_fused(torch.empty(1, 4, hw, hw), k, stride, dilation) == fused
        assert not _unit_is_fused(torch.empty(1, 4, hw, hw, dtype=torch.half), k, stride, dilation)
