"""The ops at their edges: double backward, mixed devices (meta included), NaN, as the reference."""
import pytest
import torch

import dartscc_fast
from dartscc_fast import ops, reference

NAN, INF = float("nan"), float("inf")


def _mixed_sum():
    outs = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    return (outs, w), ops.mixed_sum, reference.mixed_sum


def _hard_mixed_sum():
    w = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    index = torch.tensor([1, 0, 1])
    outs = [torch.randn(1, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(0, 4, dtype=torch.float64, requires_grad=True)]
    return (outs, w, index), ops.hard_mixed_sum, reference.hard_mixed_sum


def _mixed_op_free():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    prims = ["param", "identity", "max_pool", "avg_pool"]
    return (x, [p], w, prims), (lambda *a: ops.mixed_op_free(*a)[0]), reference.mixed_op_free


def _gumbel_softmax():
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    return (logits,), (lambda l: ops.gumbel_softmax(l, 0.7, seed=3)), \
        (lambda l: reference.gumbel_softmax(l, 0.7, False, 3))


def _relu_dw_pw_conv():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    dw = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(4, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    return (x, dw, pw), ops.relu_dw_pw_conv, reference.relu_dw_pw_conv


def _batch_norm_train():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    return (x,), (lambda t: ops.batch_norm_train(t)[0]), (lambda t: reference.batch_norm_train(t)[0])


CASES = {"mixed_sum": _mixed_sum, "hard_mixed_sum": _hard_mixed_sum, "mixed_op_free": _mixed_op_free,
         "gumbel_softmax": _gumbel_softmax, "relu_dw_pw_conv": _relu_dw_pw_conv,
         "batch_norm_train": _batch_norm_train}


def _leaves(args):
    return [t for a in args for t in (a if isinstance(a, list) else [a])
            if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize("name", CASES)
def test_double_backward_raises_naming_the_op(name):
    args, op, ref = CASES[name]()
    leaves = _leaves(args)
    # the reference has a true, nonzero second derivative ...
    g_ref = torch.autograd.grad(ref(*args).square().sum(), leaves, create_graph=True, allow_unused=True)
    second = torch.autograd.grad(sum(g.sum() for g in g_ref if g is not None), leaves, allow_unused=True)
    assert any(s is not None and s.abs().sum() > 0 for s in second)
    # ... which the op does not have: asking for it raises, naming the op
    g = torch.autograd.grad(op(*args).square().sum(), leaves, create_graph=True, allow_unused=True)
    for a, b in zip(g, g_ref):  # the first derivative is still right, and carries the graph
        if a is not None and b is not None:
            torch.testing.assert_close(a, b.detach())
    with pytest.raises(RuntimeError, match=f"dartscc_fast.ops.{name}: double backward"):
        torch.autograd.grad(sum(t.sum() for t in g if t is not None), leaves, allow_unused=True)
    with pytest.raises(RuntimeError, match=f"ops.{name}: double backward"):
        sum(t.sum() for t in g if t is not None).backward()


def test_double_backward_through_the_registered_autograd_raises_too():
    outs = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = torch.ops.dartscc_fast.mixed_sum(outs, w)  # torch.library's autograd kernel, not the eager wrapper
    (gw,) = torch.autograd.grad(y.square().sum(), [w], create_graph=True)
    with pytest.raises(RuntimeError, match="ops.mixed_sum: double backward"):
        torch.autograd.grad(gw.sum(), outs)


def test_first_order_gradients_are_unchanged_and_node_sum_differentiates_twice():
    args, op, ref = _mixed_sum()
    leaves = _leaves(args)
    plain = torch.autograd.grad(op(*args).square().sum(), leaves)
    assert all(not t.requires_grad for t in plain)
    xs = [torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    (g,) = torch.autograd.grad(ops.node_sum(xs).square().sum(), [xs[0]], create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), [xs[1]])  # d/dx1 of 2 (x0 + x1 + x2) = 2: plain torch, exact
    torch.testing.assert_close(h, torch.full_like(h, 2.0))


@pytest.mark.parametrize("name, call", [
    ("mixed_sum", lambda m: ops.mixed_sum([torch.randn(2, 3), torch.randn(2, 3, device=m)], torch.rand(2))),
    ("mixed_sum", lambda m: ops.mixed_sum([torch.randn(2, 3), torch.randn(2, 3)], torch.rand(2, device=m))),
    ("hard_mixed_sum", lambda m: ops.hard_mixed_sum([torch.randn(1, 3), torch.randn(1, 3, device=m)],
                                                    torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))),
    ("mixed_op_free", lambda m: ops.mixed_op_free(torch.randn(2, 3, 4, 4), [torch.randn(2, 3, 4, 4, device=m)],
                                                  torch.rand(2), ["param", "max_pool"])),
    ("mixed_op_free", lambda m: ops.mixed_op_free(torch.randn(2, 3, 4, 4), [], torch.rand(2, device=m),
                                                  ["identity", "avg_pool"])),
    ("relu_dw_pw_conv", lambda m: ops.relu_dw_pw_conv(torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3, device=m),
                                                      torch.randn(3, 2, 1, 1))),
    ("node_sum", lambda m: ops.node_sum([torch.randn(2, 3), torch.randn(2, 3, device=m)])),
])
def test_a_meta_tensor_among_cpu_inputs_is_refused(name, call):
    with pytest.raises(RuntimeError, match=f"{name}: .*on (meta|cpu) but the other inputs are on"):
        call("meta")


def test_all_meta_inputs_still_give_meta_shapes():
    y = ops.mixed_sum([torch.empty(2, 3, device="meta")] * 2, torch.empty(2, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 3)


def test_hard_gumbel_softmax_propagates_nan_as_the_reference():
    logits = torch.tensor([[0.1, NAN, 0.3], [-INF, -INF, -INF], [0.0, 1.0, 2.0], [NAN, NAN, NAN]])
    for hard in (True, False):
        y = ops.gumbel_softmax(logits, 0.5, hard, seed=11)
        r = reference.gumbel_softmax(logits, 0.5, hard, 11)
        torch.testing.assert_close(y, r, equal_nan=True)
        assert y[[0, 1, 3]].isnan().all() and not y[2].isnan().any()
    assert ops.gumbel_softmax(logits, 0.5, True, seed=11)[2].tolist() in ([0, 0, 1], [0, 1, 0], [1, 0, 0])


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("per_sample", [False, True])
def test_a_non_finite_weight_on_none_propagates_as_the_reference(bad, per_sample):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    p = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    prims = ["none", "param", "max_pool"]
    w = torch.rand((2, 3) if per_sample else (3,), dtype=torch.float64)
    w[..., 0] = bad
    if per_sample:
        w[1, 0] = 0.25  # the second sample's weights are finite: its output too
    y, _ = ops.mixed_op_free(x, [p], w, prims, stride=2)
    r = reference.mixed_op_free(x, [p], w, prims, stride=2)
    torch.testing.assert_close(y, r, equal_nan=True)
    assert y[0].isnan().all()
    assert not per_sample or not y[1].isnan().any()
    w[..., 0] = 0.5  # a finite weight on 'none' adds nothing
    torch.testing.assert_close(dartscc_fast.mixed_op_free(x, [p], w, prims, stride=2)[0],
                               reference.mixed_op_free(x, [p], w, prims, stride=2))


def test_nan_weights_propagate_through_the_mixed_sums():
    outs = [torch.randn(2, 3) for _ in range(3)]
    w = torch.tensor([0.2, NAN, 0.3])
    torch.testing.assert_close(ops.mixed_sum(outs, w), reference.mixed_sum(outs, w), equal_nan=True)
    wh = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 0.0]])
    index = torch.tensor([0, 1])
    hs = [torch.randn(1, 3), torch.randn(1, 3), torch.randn(0, 3)]
    y = ops.hard_mixed_sum(hs, wh, index)
    torch.testing.assert_close(y, reference.hard_mixed_sum(hs, wh, index), equal_nan=True)
    assert y[0].isnan().all() and not y[1].isnan().any()
