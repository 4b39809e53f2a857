"""The wrappers in dartscc_fast.ops run each op's registered autograd formula eagerly
(ops._EagerAutograd); torch.ops.dartscc_fast.* runs it through torch.library. Both must agree."""
import pytest
import torch

from dartscc_fast import ops

O = torch.ops.dartscc_fast


def leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def cases():
    outs, w = [leaf(2, 3, 5, 5) for _ in range(3)], torch.softmax(torch.randn(2, 3, dtype=torch.float64), -1)
    w.requires_grad_()
    x, params = leaf(2, 3, 6, 6), [leaf(2, 3, 6, 6)]
    codes = ops.prim_codes(["param", "max_pool", "identity"])
    index = torch.tensor([2, 0])
    groups = [leaf(1, 3, 5, 5), leaf(0, 3, 5, 5), leaf(1, 3, 5, 5)]  # sample 1 drew op 0, sample 0 op 2
    hard_w = torch.nn.functional.one_hot(index, 3).double().requires_grad_()
    dw, pw = leaf(3, 1, 3, 3), leaf(4, 3, 1, 1)
    logits = leaf(4, 3)
    return {
        "mixed_sum": (lambda: ops.mixed_sum(outs, w), lambda: O.mixed_sum(outs, w), outs + [w]),
        "hard_mixed_sum": (lambda: ops.hard_mixed_sum(groups, hard_w, index),
                           lambda: O.hard_mixed_sum(groups, hard_w, index), groups + [hard_w]),
        "mixed_op_free": (lambda: ops.mixed_op_free(x, params, w, codes)[0],
                          lambda: O.mixed_op_free(x, params, w, codes, 1, 1e-5, None)[0], [x, w] + params),
        "relu_dw_pw_conv": (lambda: ops.relu_dw_pw_conv(x, dw, pw, 2), lambda: O.relu_dw_pw_conv(x, dw, pw, 2, 1),
                            [x, dw, pw]),
        "batch_norm_train": (lambda: ops.batch_norm_train(x, 1e-3)[0], lambda: O.batch_norm_train(x, 1e-3)[0], [x]),
        "gumbel_softmax": (lambda: ops.gumbel_softmax(logits, 0.7, seed=3),
                           lambda: O.gumbel_softmax(logits, torch.tensor(3), 0.7, False)[0], [logits]),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_wrapper_and_registered_autograd_agree(name):
    wrapped, registered, inputs = cases()[name]
    a, b = wrapped(), registered()
    assert torch.equal(a, b)
    assert a.grad_fn is not None and type(a.grad_fn).__name__ == "_EagerAutogradBackward"
    g = torch.randn_like(a)
    for ga, gb in zip(torch.autograd.grad(a, inputs, g), torch.autograd.grad(b, inputs, g)):
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("name", list(cases()))
def test_without_gradients_no_graph(name):
    wrapped, _, _ = cases()[name]
    with torch.no_grad():
        assert wrapped().grad_fn is None


def test_compiled_wrapper_uses_the_registered_op():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    dw, pw = torch.randn(3, 1, 3, 3), torch.randn(4, 3, 1, 1)
    f = torch.compile(lambda t: ops.relu_dw_pw_conv(t, dw, pw).square().sum(), fullgraph=True)
    f(x).backward()
    want, = torch.autograd.grad(O.relu_dw_pw_conv(x, dw, pw, 1, 1).square().sum(), x)
    torch.testing.assert_close(x.grad, want)
